import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type TestEnv, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
beforeAll(async () => {
  env = await testEnv("languages");
});
afterAll(() => env?.close());

describe("each language returns the right value", () => {
  it("python", async () => {
    const r = await env.run(
      "python",
      "import sys, numpy\nprint(sum(range(10)), numpy.arange(4).sum(), sys.version_info.major)",
    );
    expect(r.stderr.text).toBe("");
    expect(r.stdout.text).toBe("45 6 3\n");
    expect(r.exitCode).toBe(0);
    expect(r.killed).toBeNull();
  });

  it("r", async () => {
    const r = await env.run(
      "r",
      "fit <- lm(Ozone ~ Solar.R + Wind + Temp, data = airquality)\ncat(round(coef(fit)[['Wind']], 4), nobs(fit), '\\n')",
    );
    expect(r.stdout.text).toBe("-3.3336 111 \n");
    expect(r.exitCode).toBe(0);
  });

  it("shell", async () => {
    const r = await env.run(
      "shell",
      "echo \"$HOME $LANG $(pwd) $BASH_VERSINFO\"; seq 1 100 | awk '{s+=$1} END {print s}'",
    );
    expect(r.stdout.text.split("\n")[0]).toBe("/root C.UTF-8 /work 5");
    expect(r.stdout.text.split("\n")[1]).toBe("5050");
    expect(r.exitCode).toBe(0);
  });

  it("sql, on /work/db.sqlite", async () => {
    const r = await env.run(
      "sql",
      "create table t(x); insert into t values (1),(2),(39);\nselect sum(x) from t;",
    );
    expect(r.stdout.text).toBe("42\n");
    expect(r.exitCode).toBe(0);
    expect(r.files.map((f) => f.path)).toEqual(["db.sqlite"]);
  });

  it("a failing SQL statement is a failure", async () => {
    const r = await env.run("sql", "select * from missing_table;");
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr.text).toMatch(/no such table/);
  });

  it("keeps the exact exit code and partial output (exit-code-fidelity)", async () => {
    const r = await env.run("shell", "echo partial; exit 7");
    expect(r.stdout.text).toBe("partial\n");
    expect(r.exitCode).toBe(7);
    expect(r.killed).toBeNull();
  });

  it("python exceptions exit 1 with the traceback on stderr", async () => {
    const r = await env.run("python", "raise ValueError('boom')");
    expect(r.exitCode).toBe(1);
    expect(r.stderr.text).toMatch(/ValueError: boom/);
  });

  it("non-ASCII R output comes back exactly (non-ascii-r)", async () => {
    const r = await env.run("r", 'cat("thầu ao\\n")');
    expect(r.stdout.text).toBe("thầu ao\n");
  });

  // 200,000 × 9 bytes is 1.8 MB, above the default 1 MiB cap: byte-identical needs a
  // larger cap; under the default cap the kept part must still end on a whole character.
  const UTF8_FLOOD = 'import sys\nsys.stdout.write("é€😀" * 200000); sys.stdout.flush()';
  it("UTF-8 split across chunks is byte-identical (utf8-split-across-chunks)", async () => {
    const r = await env.run("python", UTF8_FLOOD, { outputCapBytes: 4 * 1024 * 1024 });
    expect(r.stdout.truncated).toBe(false);
    expect(r.stdout.text).toBe("é€😀".repeat(200000));
    expect(r.stdout.base64).toBeUndefined();
  });

  it("UTF-8 truncated at the default cap ends on a whole character, with no U+FFFD", async () => {
    const r = await env.run("python", UTF8_FLOOD);
    expect(r.stdout.truncated).toBe(true);
    expect(r.stdout.bytes).toBe(1_800_000);
    expect(r.stdout.text).not.toContain("\uFFFD");
    expect(r.stdout.base64).toBeUndefined();
    expect("é€😀".repeat(200000).startsWith(r.stdout.text)).toBe(true);
    expect(Buffer.byteLength(r.stdout.text)).toBeGreaterThan(1024 * 1024 - 4);
  });

  it("invalid bytes come with their raw base64 (invalid-bytes)", async () => {
    const r = await env.run("python", 'import sys\nsys.stdout.buffer.write(b"ok\\xff\\xfe\\n")');
    expect(r.stdout.text).toBe("ok\uFFFD\uFFFD\n");
    expect(Buffer.from(r.stdout.base64 ?? "", "base64")).toEqual(
      Buffer.from([0x6f, 0x6b, 0xff, 0xfe, 0x0a]),
    );
  });

  it("matplotlib draws a PNG headless, and the file comes out", async () => {
    const r = await env.run(
      "python",
      "import matplotlib.pyplot as plt\nplt.plot([1,2,3])\nplt.savefig('/work/chart.png')\nprint('ok')",
    );
    expect(r.stderr.text).toBe("");
    expect(r.stdout.text).toBe("ok\n");
    const png = r.files.find((f) => f.path === "chart.png");
    expect(png?.size).toBeGreaterThan(1000);
  });

  it("pip in the venv works without network only for what is installed", async () => {
    const r = await env.run(
      "shell",
      "command -v pip python3; pip --version >/dev/null && echo pip-ok",
    );
    expect(r.stdout.text).toBe("/opt/venv/bin/pip\n/opt/venv/bin/python3\npip-ok\n");
  });
});
