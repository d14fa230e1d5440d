import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import {
  decodeJsonEnd,
  decodeJsonEvent,
  encodeJsonRequest,
  KERNELS,
  kernelOptions,
  parseContextLanguage,
  shellQuote,
} from "../../src/kernels/kernels.js";
import {
  DONE_KERNEL_LOST,
  DONE_SANDBOX_KILLED,
  DONE_TIMED_OUT,
  decodeCallDone,
} from "../../src/supervisor/protocol.js";

describe("shellQuote", () => {
  it.each(["", "plain", "it's", "a b\nc", "$(rm -rf /)", "`x`", "'\"'", "é€😀", "\\"])(
    "bash reads %j back exactly",
    (s) => {
      const out = execFileSync("bash", ["-c", `printf %s ${shellQuote(s)}`], { encoding: "utf8" });
      expect(out).toBe(s);
    },
  );
});

describe("shell kernel requests", () => {
  const shell = KERNELS.shell;
  it("is the code, NUL-terminated", () => {
    expect(shell.encodeRequest("echo hi", {})).toEqual(Buffer.from("echo hi\0"));
  });
  it("puts per-call variables before eval, quoted", () => {
    const req = shell.encodeRequest("echo $A", { A: "x'; rm -rf /" }).toString();
    expect(req).toBe(`A='x'\\''; rm -rf /' eval 'echo $A'\0`);
    const out = execFileSync("bash", ["-c", req.slice(0, -1)], { encoding: "utf8" });
    expect(out).toBe("x'; rm -rf /\n");
  });
  it("refuses a NUL in the code and bad variable names", () => {
    expect(() => shell.encodeRequest("a\0b", {})).toThrow(/NUL/);
    expect(() => shell.encodeRequest("x", { "A B": "1" })).toThrow(/invalid environment/);
    expect(() => shell.encodeRequest("x", { "1A": "1" })).toThrow(/invalid environment/);
  });
  it("reads the exit status from END, and nothing else", () => {
    expect(shell.decodeEnd(Buffer.from("0")).exitCode).toBe(0);
    expect(shell.decodeEnd(Buffer.from("255")).exitCode).toBe(255);
    for (const bad of ["", "-1", "1.5", "abc", "1234"]) {
      expect(shell.decodeEnd(Buffer.from(bad)).exitCode).toBeNull();
    }
  });
});

describe("python kernel frames", () => {
  const py = KERNELS.python;
  it("encodes a length-prefixed JSON request", () => {
    const req = py.encodeRequest("print(1)", { A: "1" });
    expect(req.readUInt32BE(0)).toBe(req.length - 4);
    expect(JSON.parse(req.subarray(4).toString())).toEqual({ code: "print(1)", env: { A: "1" } });
  });
  it("decodes events and ignores what it does not know", () => {
    expect(py.decodeEvent(Buffer.from('{"type":"ready"}'))).toEqual({ type: "ready" });
    expect(
      py.decodeEvent(Buffer.from('{"type":"result","data":{"text/plain":"1"},"metadata":{}}')),
    ).toEqual({ type: "result", data: { "text/plain": "1" }, metadata: {} });
    expect(py.decodeEvent(Buffer.from('{"type":"error","ename":"E","evalue":1}'))).toEqual({
      type: "error",
      error: { ename: "E", evalue: "", traceback: [] },
    });
    expect(py.decodeEvent(Buffer.from('{"type":"bogus"}'))).toBeNull();
    expect(py.decodeEvent(Buffer.from("not json"))).toBeNull();
    expect(py.decodeEvent(Buffer.from("null"))).toBeNull();
    expect(py.decodeEnd(Buffer.from('{"executionCount":3}')).executionCount).toBe(3);
    expect(py.decodeEnd(Buffer.from('{"executionCount":"3"}')).executionCount).toBeNull();
  });
});

describe("JSON kernels (Python, R, SQL) share one request and event format", () => {
  it("every JSON kernel encodes the same request", () => {
    const env = { A: "é" };
    const want = encodeJsonRequest("x <- 1", env);
    expect(want.readUInt32BE(0)).toBe(want.length - 4);
    for (const k of [KERNELS.python, KERNELS.r, KERNELS.sql]) {
      expect(k.encodeRequest("x <- 1", env)).toEqual(want);
      expect(k.decodeEvent).toBe(decodeJsonEvent);
      expect(k.decodeEnd).toBe(decodeJsonEnd);
    }
  });
  it("keeps UTF-8 and a result set's numbers as they were sent", () => {
    const payload = Buffer.from(
      JSON.stringify({
        type: "result",
        data: {
          "application/json": { columns: [{ name: "x", type: "REAL" }], rows: [[2.5], [10]] },
          "text/plain": "thầu ao",
        },
        metadata: {},
      }),
    );
    expect(decodeJsonEvent(payload)).toEqual({
      type: "result",
      data: {
        "application/json": { columns: [{ name: "x", type: "REAL" }], rows: [[2.5], [10]] },
        "text/plain": "thầu ao",
      },
      metadata: {},
    });
  });
});

describe("r kernel", () => {
  const r = KERNELS.r;
  it("runs the driver under R itself, with no profile, interrupted by SIGINT", () => {
    expect(r.argv({})).toEqual([
      "R",
      "--vanilla",
      "--quiet",
      "--no-echo",
      "--file=/.corral/kernels/r.R",
    ]);
    expect(r.interruptSignal).toBe(2);
  });
  it("refuses a NUL in the code (an R string cannot hold one)", () => {
    expect(() => r.encodeRequest("cat('a\0b')", {})).toThrow(/^R code cannot contain a NUL byte$/);
  });
  it("decodes an R error with its call and frames", () => {
    const ev = r.decodeEvent(
      Buffer.from(
        '{"type":"error","ename":"simpleError","evalue":"boom","traceback":["Error in f() : boom","1: f()"]}',
      ),
    );
    expect(ev).toEqual({
      type: "error",
      error: {
        ename: "simpleError",
        evalue: "boom",
        traceback: ["Error in f() : boom", "1: f()"],
      },
    });
    expect(r.decodeEnd(Buffer.from('{"executionCount":2,"status":"ok"}'))).toEqual({
      exitCode: null,
      executionCount: 2,
    });
  });
});

describe("sql kernel", () => {
  const sql = KERNELS.sql;
  it("opens /work/db.sqlite unless the context names another database", () => {
    expect(sql.argv({})).toEqual(["python3", "/.corral/kernels/sql.py", "/work/db.sqlite"]);
    expect(sql.argv({ database: "/work/other.sqlite" })).toEqual([
      "python3",
      "/.corral/kernels/sql.py",
      "/work/other.sqlite",
    ]);
    expect(sql.interruptSignal).toBe(2);
  });
});

describe("kernel options", () => {
  it.each([
    ["sql", undefined, { database: "/work/db.sqlite" }],
    ["sql", "/work/other.sqlite", { database: "/work/other.sqlite" }],
    ["sql", ":memory:", { database: ":memory:" }],
    ["python", undefined, {}],
    ["r", undefined, {}],
  ] as const)("%s with database %j gives %j", (lang, db, want) => {
    expect(kernelOptions(lang, db)).toEqual(want);
  });
  it.each([
    ["sql", "db.sqlite", /^database must be an absolute path or ":memory:", not "db.sqlite"$/],
    ["sql", "", /^database must be an absolute path/],
    ["sql", "/work/a\0b", /^database must be an absolute path/],
    ["r", "/work/db.sqlite", /^database is for SQL contexts, not r$/],
  ] as const)("%s with database %j is refused", (lang, db, message) => {
    expect(() => kernelOptions(lang, db)).toThrow(message);
  });
});

describe("context languages", () => {
  it("accepts names and aliases, refuses others in one line", () => {
    expect(parseContextLanguage("Python")).toBe("python");
    expect(parseContextLanguage("bash")).toBe("shell");
    expect(parseContextLanguage("R")).toBe("r");
    expect(parseContextLanguage("sqlite")).toBe("sql");
    expect(parseContextLanguage("SQL")).toBe("sql");
    expect(() => parseContextLanguage("cobol")).toThrow(
      /^unknown context language "cobol": expected one of python, r, shell, sql$/,
    );
  });
});

describe("CTX_DONE", () => {
  it("decodes flags, sweep count and wall time", () => {
    const p = Buffer.alloc(16);
    p.writeUInt32BE(DONE_TIMED_OUT | DONE_SANDBOX_KILLED, 0);
    p.writeUInt32BE(7, 4);
    p.writeBigUInt64BE(1234567n, 8);
    expect(decodeCallDone(p)).toEqual({
      timedOut: true,
      kernelLost: false,
      sandboxKilled: true,
      swept: 7,
      wallUs: 1234567,
    });
    p.writeUInt32BE(DONE_KERNEL_LOST, 0);
    expect(decodeCallDone(p).kernelLost).toBe(true);
    expect(() => decodeCallDone(Buffer.alloc(15))).toThrow(RangeError);
  });
});

describe("hostile kernel frames", () => {
  it("a deeply nested frame is dropped whole; a value of the wrong type is ignored", () => {
    const deep = `{"type":"error","ename":${"[".repeat(200000)}${"]".repeat(200000)},"evalue":"","traceback":[]}`;
    expect(KERNELS.python.decodeEvent(Buffer.from(deep))).toBeNull();
    expect(
      KERNELS.python.decodeEvent(
        Buffer.from('{"type":"error","ename":[1],"evalue":{"a":1},"traceback":[1,"t",[2]]}'),
      ),
    ).toEqual({ type: "error", error: { ename: "Error", evalue: "", traceback: ["t"] } });
    expect(
      KERNELS.python.decodeEvent(Buffer.from('{"type":"display","data":[1,2],"metadata":"x"}')),
    ).toEqual({ type: "display", data: {}, metadata: {} });
  });
});

describe("timeouts on the wire", () => {
  it("round a positive fraction up, never to 0 (no timeout)", async () => {
    const { clampMs } = await import("../../src/supervisor/protocol.js");
    expect(clampMs(0.4)).toBe(1);
    expect(clampMs(1.2)).toBe(2);
    expect(clampMs(0)).toBe(0);
    expect(clampMs(Number.NaN)).toBe(0);
    expect(clampMs(1e12)).toBe(0xffffffff);
  });
});

describe("the shape of a kernel frame's JSON", () => {
  it("is bounded in depth and in containers before it is parsed", async () => {
    const { jsonShapeOk, MAX_JSON_CONTAINERS, MAX_JSON_DEPTH } = await import(
      "../../src/kernels/kernels.js"
    );
    expect(jsonShapeOk(Buffer.from('{"a":[1,{"b":"[[[[[[[[[["}]}'))).toBe(true);
    expect(
      jsonShapeOk(Buffer.from(`${"[".repeat(MAX_JSON_DEPTH)}${"]".repeat(MAX_JSON_DEPTH)}`)),
    ).toBe(true);
    expect(
      jsonShapeOk(
        Buffer.from(`${"[".repeat(MAX_JSON_DEPTH + 1)}${"]".repeat(MAX_JSON_DEPTH + 1)}`),
      ),
    ).toBe(false);
    const many = `{"x":[${"{},".repeat(MAX_JSON_CONTAINERS)}{}]}`;
    expect(jsonShapeOk(Buffer.from(many))).toBe(false);
    // A string may hold any brackets, and escaped quotes do not end it.
    expect(jsonShapeOk(Buffer.from(`{"s":"\\"${"{".repeat(200000)}"}`))).toBe(true);
    const display = Buffer.from(
      `{"type":"display","data":{"x":[${"{},".repeat(MAX_JSON_CONTAINERS)}{}]}}`,
    );
    expect(KERNELS.python.decodeEvent(display)).toBeNull();
  });
});
