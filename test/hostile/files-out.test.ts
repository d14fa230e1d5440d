/**
 * `corral run --out` against a layer the code shaped to trick the host: names that are
 * not UTF-8 aliasing a link to the host's /etc, paths too long for the host to open by
 * name, sparse files far larger than the disk limit.
 */
import { existsSync, readdirSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { corral } from "../helpers/cli.js";
import { testDataDir } from "../helpers/sandbox.js";

const run = (dataDir: string, args: string[]) => corral(["--data-dir", dataDir, "run", ...args]);

describe("--out and the result's files against hostile layers", () => {
  it("a \\xff directory beside a link named U+FFFD to /etc brings out no host file", async () => {
    const dataDir = testDataDir("files-out");
    const out = path.join(dataDir, "out");
    const r = await run(dataDir, [
      "--json",
      "--out",
      out,
      "--lang",
      "python",
      "-c",
      'import os; os.mkdir(b"/work/\\xff"); open(b"/work/\\xff/x", "w").write("m"); os.symlink("/etc", "/work/\\ufffd")',
    ]);
    expect(r.code).toBe(0);
    const files = JSON.parse(r.stdout).files as { path: string }[];
    expect(files.map((f) => f.path)).toEqual(["\\xff"]);
    expect(existsSync(out) ? readdirSync(out) : []).toEqual([]);
  });

  it("paths too long for the host to open by name keep the program's exit code", async () => {
    const dataDir = testDataDir("files-out");
    const r = await run(dataDir, [
      "--json",
      "--lang",
      "python",
      "-c",
      "import os\nos.chdir('/work')\nfor i in range(20):\n    os.mkdir('d' * 255); os.chdir('d' * 255)\nopen('f', 'w').write('x')\nraise SystemExit(3)",
    ]);
    expect(r.code).toBe(3);
    const files = JSON.parse(r.stdout).files as { path: string }[];
    expect(files).toHaveLength(1);
    expect(files[0]!.path.endsWith("/f")).toBe(true);
  });

  it("paths too long for the host, with --out: skipped, the run and its record kept", async () => {
    const dataDir = testDataDir("files-out");
    const out = path.join(dataDir, "out");
    const r = await run(dataDir, [
      "--json",
      "--out",
      out,
      "--lang",
      "python",
      "-c",
      "import os\nos.chdir('/work')\nopen('/work/short', 'w').write('s')\nfor i in range(20):\n    os.mkdir('d' * 250); os.chdir('d' * 250)\nopen('f', 'w').write('x')\nraise SystemExit(3)",
    ]);
    expect(r.code).toBe(3);
    const files = JSON.parse(r.stdout).files as {
      path: string;
      copied: boolean;
      skipped?: string;
    }[];
    expect(files.map((f) => [f.path.length > 4096, f.copied, f.skipped ?? null])).toEqual([
      [true, false, "unsafe_name"],
      [false, true, null],
    ]);
    const events = await corral(["--data-dir", dataDir, "events", "--kind", "exec", "--json"]);
    expect(
      JSON.parse(events.stdout).map((e: { details: { exitCode: number } }) => e.details.exitCode),
    ).toEqual([3]);
  });

  it("a layer of thousands of long-named files: the result and its event stay bounded", async () => {
    const dataDir = testDataDir("files-out");
    const r = await run(dataDir, [
      "--json",
      "--lang",
      "python",
      "-c",
      // 3,000 files of 200-byte control-character names, 8 levels down (each byte is
      // escaped to 6 characters in JSON): 3.6 MB of names before escaping.
      "import os\nos.chdir('/work')\nfor i in range(8):\n    n = bytes([1]) * 200\n    os.mkdir(n); os.chdir(n)\nfor i in range(3000):\n    open(bytes([1]) * 190 + str(i).encode(), 'w').close()",
    ]);
    expect(r.code).toBe(0);
    const result = JSON.parse(r.stdout) as { files: unknown[]; filesTruncated?: boolean };
    expect(result.files.length).toBeGreaterThan(0);
    // Past the walk's bound on path text the list stops, and says so.
    expect(result.filesTruncated).toBe(true);
    const events = await corral(["--data-dir", dataDir, "events", "--json"]);
    const log = JSON.parse(events.stdout) as { kind: string; details: Record<string, unknown> }[];
    expect(log.map((e) => e.kind)).toEqual([
      "sandbox.self_check",
      "sandbox.create",
      "exec",
      "sandbox.destroy",
    ]);
    const exec = log.find((e) => e.kind === "exec")!;
    expect(JSON.stringify(exec.details).length).toBeLessThan(300 * 1024);
    const verify = await corral(["--data-dir", dataDir, "events", "--verify"]);
    expect(verify.code).toBe(0);
  });

  it("sparse files cannot make the host write more than the disk limit", async () => {
    const dataDir = testDataDir("files-out");
    const out = path.join(dataDir, "out");
    const r = await run(dataDir, [
      "--json",
      "--disk",
      "100m",
      "--out",
      out,
      "--lang",
      "shell",
      "-c",
      "for i in 1 2 3 4 5; do truncate -s 40M /work/s$i; done",
    ]);
    expect(r.code).toBe(0);
    const files = JSON.parse(r.stdout).files as { path: string; skipped?: string }[];
    const copied = readdirSync(out);
    expect(copied.length).toBeLessThanOrEqual(2);
    expect(files.filter((f) => f.skipped === "total_cap").length).toBe(5 - copied.length);
  });
});
