import { describe, expect, it } from "vitest";
import { compareToReference, parseKeyValues } from "../../src/cli/demo.js";

describe("demo reference check", () => {
  it("parses key value lines", () => {
    expect(parseKeyValues("rows 153\n  coef.wind -3.3336 \nnoise\n")).toEqual({
      rows: "153",
      "coef.wind": "-3.3336",
    });
  });
  it.each([
    [{ a: "1.00001" }, { a: "1" }, []],
    [{ a: "1.01" }, { a: "1" }, ["a: got 1.01, want 1"]],
    [{}, { a: "1" }, ["a: missing (want 1)"]],
    [{ a: "x.png" }, { a: "x.png" }, []],
    [{ a: "y.png" }, { a: "x.png" }, ["a: got y.png, want x.png"]],
  ])("%j against %j", (got, want, problems) => {
    expect(compareToReference(got, want)).toEqual(problems);
  });
});
