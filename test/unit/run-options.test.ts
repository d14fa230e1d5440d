import { describe, expect, it } from "vitest";
import {
  chooseRunProgram,
  imageProgramArgv,
  inputDestination,
  parseEnvFlags,
  parseInFlag,
  parseWorkdir,
  planHostInputs,
  sandboxPath,
} from "../../src/core/run-options.js";

describe("parseEnvFlags", () => {
  it("takes NAME=VALUE; values may be empty or hold '='; the last one wins", () => {
    expect(parseEnvFlags(["A=1", "B=", "C=x=y", "_D9=ü", "A=2"])).toEqual({
      A: "2",
      B: "",
      C: "x=y",
      _D9: "ü",
    });
    expect(parseEnvFlags([])).toEqual({});
  });

  it.each([["=x"], ["1A=x"], ["A-B=x"], ["A B=x"], [""], ["1A"]])("refuses %j", (item) => {
    expect(() => parseEnvFlags([item])).toThrow(/--env .*: expected NAME=VALUE/);
  });

  it("says a valid name without a value has no value: the host's is never taken", () => {
    expect(() => parseEnvFlags(["FOO"])).toThrow(
      "--env FOO has no value: give FOO=VALUE (Corral never reads it from the host)",
    );
  });
});

describe("sandboxPath and parseWorkdir", () => {
  it.each([
    ["/data", "/data"],
    ["/data/", "/data"],
    ["/a//b/./c", "/a/b/c"],
    ["sub", "/work/sub"],
    ["./sub/x", "/work/sub/x"],
    [".", "/work"],
    ["/", "/"],
    ["/work", "/work"],
  ])("%j is %j", (text, p) => {
    expect(sandboxPath(text, "x")).toBe(p);
    expect(parseWorkdir(text)).toBe(p);
  });

  it.each([
    ["..", /"\.\." is not allowed/],
    ["../etc", /"\.\." is not allowed/],
    ["/work/../etc", /"\.\." is not allowed/],
    ["a/b/..", /"\.\." is not allowed/],
    ["", /empty path/],
    ["a\0b", /NUL/],
  ])("refuses %j", (text, message) => {
    expect(() => sandboxPath(text, "--workdir")).toThrow(message);
  });

  it("allows names that merely contain dots", () => {
    expect(sandboxPath("..a/b..", "x")).toBe("/work/..a/b..");
  });
});

describe("inputDestination", () => {
  it.each([
    ["/", /cannot copy onto \/ itself/],
    ["/proc/x", /\/proc is mounted over/],
    ["/proc", /\/proc is mounted over/],
    ["/sys", /\/sys is mounted over/],
    ["/dev/shm/x", /\/dev is mounted over/],
    ["/.corral/supervisor", /\/\.corral is mounted over/],
  ])("refuses %j", (text, message) => {
    expect(() => inputDestination(text, "--in f")).toThrow(message);
  });

  it.each([
    ["/procedures", "/procedures"],
    ["/devices/x", "/devices/x"],
    ["data", "/work/data"],
  ])("takes %j", (text, dest) => {
    expect(inputDestination(text, "--in f")).toBe(dest);
  });
});

describe("parseInFlag", () => {
  it.each([
    ["data.csv", { source: "data.csv", dest: "/work/data.csv" }],
    ["/srv/x/data.csv", { source: "/srv/x/data.csv", dest: "/work/data.csv" }],
    ["dir/", { source: "dir/", dest: "/work/dir" }],
    [".", { source: ".", dest: "/work/home" }],
    ["data.csv:/in/d.csv", { source: "data.csv", dest: "/in/d.csv" }],
    ["data.csv:in.csv", { source: "data.csv", dest: "/work/in.csv" }],
    ["a:b:/x", { source: "a:b", dest: "/x" }],
  ])("%j", (text, input) => {
    expect(parseInFlag(text, "/home")).toEqual(input);
  });

  it.each([
    ["x:../etc/passwd", /"\.\." is not allowed/],
    ["x:/work/../../etc", /"\.\." is not allowed/],
    [":/x", /no host path before the ":"/],
    ["/", /give a destination/],
    ["x:", /empty path/],
    ["x:/", /cannot copy onto \//],
  ])("refuses %j", (text, message) => {
    expect(() => parseInFlag(text, "/home")).toThrow(message);
  });
});

describe("planHostInputs", () => {
  it("adds --db as /work/db.sqlite", () => {
    expect(planHostInputs({ in: ["a.csv"], db: "x.db" }, "/")).toEqual([
      { source: "a.csv", dest: "/work/a.csv" },
      { source: "x.db", dest: "/work/db.sqlite" },
    ]);
  });

  it.each([
    [
      { in: ["a/x.csv", "b/x.csv"] },
      /a\/x\.csv and b\/x\.csv would both be copied to \/work\/x\.csv/,
    ],
    [{ in: ["d:/data", "f:/data/f"] }, /would both be copied/],
    [{ in: ["f:/work/db.sqlite"], db: "x.db" }, /would both be copied to \/work\/db\.sqlite/],
    [{ db: "" }, /--db: empty path/],
  ])("refuses %j", (flags, message) => {
    expect(() => planHostInputs(flags, "/")).toThrow(message);
  });
});

describe("chooseRunProgram", () => {
  it("-- ARGV runs the argv", () => {
    expect(chooseRunProgram({ operands: [], argvAfterDash: ["/hello", "a", "-x"] })).toEqual({
      kind: "argv",
      argv: ["/hello", "a", "-x"],
    });
  });

  it("nothing at all runs the image's default program", () => {
    expect(chooseRunProgram({ operands: [], argvAfterDash: null })).toEqual({ kind: "image" });
    expect(chooseRunProgram({ operands: [], argvAfterDash: null, interactive: true })).toEqual({
      kind: "image",
    });
  });

  it("--lang with a file, stdin or -c", () => {
    expect(chooseRunProgram({ operands: ["x.py"], argvAfterDash: null, lang: "py" })).toEqual({
      kind: "code",
      language: "py",
      source: { file: "x.py" },
      args: [],
    });
    expect(chooseRunProgram({ operands: [], argvAfterDash: null, lang: "sh", code: "ls" })).toEqual(
      { kind: "code", language: "sh", source: { code: "ls" }, args: [] },
    );
    expect(chooseRunProgram({ operands: ["-"], argvAfterDash: null, lang: "r" }).kind).toBe("code");
  });

  it("with --lang, what follows -- is the code's own arguments", () => {
    expect(
      chooseRunProgram({ operands: ["x.py"], argvAfterDash: ["a", "-b", ""], lang: "py" }),
    ).toEqual({ kind: "code", language: "py", source: { file: "x.py" }, args: ["a", "-b", ""] });
    expect(
      chooseRunProgram({ operands: [], argvAfterDash: ["hi"], lang: "sh", code: 'echo "$1"' }),
    ).toEqual({ kind: "code", language: "sh", source: { code: 'echo "$1"' }, args: ["hi"] });
  });

  it.each([
    [{ operands: [], argvAfterDash: ["/x"], code: "x" }, /-c needs --lang .* its arguments/],
    [{ operands: ["f"], argvAfterDash: ["/x"] }, /unexpected "f" before --/],
    [{ operands: [], argvAfterDash: [] }, /nothing after --/],
    [
      { operands: [], argvAfterDash: null, code: "print(1)" },
      /^-c needs --lang python\|r\|shell\|sql$/,
    ],
    [
      { operands: ["a.py"], argvAfterDash: null },
      /^"a.py" needs --lang python\|r\|shell\|sql to run as code; a program and its arguments go after --/,
    ],
    [
      { operands: ["a", "b"], argvAfterDash: null, lang: "py" },
      /too many arguments: a b \(the code's own arguments go after --: corral run --lang py a -- b\)/,
    ],
    [{ operands: ["a"], argvAfterDash: null, lang: "py", code: "x" }, /either a FILE or -c/],
    [{ operands: [], argvAfterDash: null, lang: "py" }, /no code/],
    [
      { operands: ["-"], argvAfterDash: null, lang: "py", interactive: true },
      /-i forwards standard input/,
    ],
  ])("refuses %j", (input, message) => {
    expect(() => chooseRunProgram(input)).toThrow(message);
  });
});

describe("imageProgramArgv", () => {
  const both = { entrypoint: ["/bin/tool", "--v"], cmd: ["serve", "-p", "80"] };
  it.each([
    ["Entrypoint and Cmd", both, null, ["/bin/tool", "--v", "serve", "-p", "80"]],
    ["arguments replace Cmd, Entrypoint stays", both, ["check"], ["/bin/tool", "--v", "check"]],
    ["Cmd alone", { cmd: ["/bin/sh"] }, null, ["/bin/sh"]],
    ["arguments replace a lone Cmd", { cmd: ["/bin/sh"] }, ["/bin/ls", "/"], ["/bin/ls", "/"]],
    ["Entrypoint alone", { entrypoint: ["/e"] }, null, ["/e"]],
    ["no default: the arguments", {}, ["/bin/ls"], ["/bin/ls"]],
  ])("%s", (_what, image, args, argv) => {
    expect(imageProgramArgv(image, "x", args)).toEqual(argv);
  });

  it("says what to give when the image has nothing to run", () => {
    expect(() => imageProgramArgv({}, "default", null)).toThrow(
      'nothing to run: image "default" has no Entrypoint or Cmd; give --lang python|r|shell|sql with -c CODE or a FILE, or -- PROGRAM [ARGS...]',
    );
  });
});
