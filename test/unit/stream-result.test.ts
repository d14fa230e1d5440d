import { describe, expect, it } from "vitest";
import { incompleteUtf8Tail, streamResult } from "../../src/sandbox/run-code.js";

describe("incompleteUtf8Tail", () => {
  const euro = Buffer.from("€"); // e2 82 ac
  const grin = Buffer.from("😀"); // f0 9f 98 80
  it.each([
    ["ascii", Buffer.from("abc"), 0],
    ["whole 3-byte", Buffer.concat([Buffer.from("a"), euro]), 0],
    ["3-byte cut after 1", Buffer.concat([Buffer.from("a"), euro.subarray(0, 1)]), 1],
    ["3-byte cut after 2", Buffer.concat([Buffer.from("a"), euro.subarray(0, 2)]), 2],
    ["4-byte cut after 3", grin.subarray(0, 3), 3],
    ["whole 4-byte", grin, 0],
    ["2-byte cut", Buffer.from([0x61, 0xc3]), 1],
    ["invalid lone byte is not a tail", Buffer.from([0x61, 0xff]), 0],
    ["stray continuation is not a tail", Buffer.from([0x61, 0x80]), 0],
    ["empty", Buffer.alloc(0), 0],
  ])("%s", (_name, buf, want) => {
    expect(incompleteUtf8Tail(buf)).toBe(want);
  });
});

describe("streamResult", () => {
  it("drops a character cut by the cap, but only when truncated", () => {
    const cut = Buffer.from("ab€").subarray(0, 4);
    expect(streamResult(cut, 100)).toEqual({ text: "ab", bytes: 100, truncated: true });
    const whole = streamResult(cut, 4);
    expect(whole.text).toBe("ab\uFFFD");
    expect(Buffer.from(whole.base64 ?? "", "base64")).toEqual(cut);
  });
});

describe("byte order marks in output", () => {
  it("are kept: the text is byte-identical to what the program wrote", async () => {
    const { streamResult } = await import("../../src/sandbox/run-code.js");
    const { Utf8Stream } = await import("../../src/sandbox/utf8-stream.js");
    const bytes = Buffer.from("\ufeffhello", "utf8");
    expect(streamResult(bytes, bytes.length).text).toBe("\ufeffhello");
    const s = new Utf8Stream();
    expect(s.push(bytes).text + s.end().text).toBe("\ufeffhello");
  });
});
