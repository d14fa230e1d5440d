/** The `corral` command as a user runs it: real processes, real sandboxes. */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { CLI, ROOT, testDataDir } from "../helpers/sandbox.js";

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function corral(
  dataDir: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; input?: string } = {},
): Promise<Ran> {
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      [CLI, "--data-dir", dataDir, ...args],
      { env: { ...process.env, ...opts.env }, maxBuffer: 64 << 20, timeout: 120_000 },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number; signal?: NodeJS.Signals }) | null;
        resolve({
          code: e ? (typeof e.code === "number" ? e.code : null) : 0,
          signal: e?.signal ?? null,
          stdout,
          stderr,
        });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

function runcList(dataDir: string): Promise<string[]> {
  return new Promise((resolve) =>
    execFile("runc", ["--root", path.join(dataDir, "runc"), "list", "-q"], (_e, out) =>
      resolve(out.trim() === "" ? [] : out.trim().split("\n")),
    ),
  );
}

/** A shell command line (pipes, redirections), as a user types it. */
function shell(line: string): Promise<Ran> {
  return new Promise((resolve) =>
    execFile("sh", ["-c", line], { timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? 1 : 0, signal: null, stdout, stderr }),
    ),
  );
}

async function gcFinds(dataDir: string): Promise<string[]> {
  const r = await corral(dataDir, ["gc", "--dry-run", "--json"]);
  const report = JSON.parse(r.stdout) as Record<string, string[]>;
  return Object.entries(report).flatMap(([k, v]) => v.map((x) => `${k}: ${x}`));
}

const oneLineError = (r: Ran) => {
  expect(r.code).toBe(125);
  expect(r.stderr).toMatch(/^corral: [^\n]+\n$/);
  expect(r.stderr).not.toMatch(/\bat .*\.js:\d+/);
};

describe("corral run", () => {
  const dataDir = testDataDir("cli");

  it("streams output and passes the exit code through", async () => {
    const r = await corral(dataDir, [
      "run",
      "--lang",
      "shell",
      "-c",
      "echo out; echo err >&2; exit 3",
    ]);
    expect(r).toMatchObject({ code: 3, stdout: "out\n", stderr: "err\n" });
  });

  it("reads code from a file and from stdin", async () => {
    const dir = mkdtempSync(path.join(dataDir, "code-"));
    writeFileSync(path.join(dir, "x.py"), "print(6 * 7)\n");
    expect(
      (await corral(dataDir, ["run", "--lang", "python", path.join(dir, "x.py")])).stdout,
    ).toBe("42\n");
    expect(
      (await corral(dataDir, ["run", "--lang", "r", "-"], { input: "cat(1 + 1, '\\n')" })).stdout,
    ).toBe("2 \n");
  });

  it("--json prints one result with every field", async () => {
    const r = await corral(dataDir, [
      "run",
      "--lang",
      "python",
      "--json",
      "-c",
      "open('/work/o.txt','w').write('hi'); print('x')",
    ]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({
      exitCode: 0,
      killed: null,
      stdout: { text: "x\n", bytes: 2, truncated: false },
      stderr: { text: "", bytes: 0, truncated: false },
      language: "python",
    });
    expect(j.image).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(j.durationMs).toBeGreaterThan(0);
    expect(j.cpuMs).toBeGreaterThan(0);
    expect(j.peakMemoryBytes).toBeGreaterThan(1 << 20);
    expect(j.files).toEqual([expect.objectContaining({ path: "o.txt", size: 2 })]);
  });

  it("timeout exits 124 and OOM exits 137, both with one line saying why", async () => {
    const t = await corral(dataDir, [
      "run",
      "--lang",
      "shell",
      "--timeout",
      "1s",
      "-c",
      "sleep 10",
    ]);
    expect(t.code).toBe(124);
    expect(t.stderr).toBe("corral: killed: timeout after 1s\n");
    const o = await corral(dataDir, [
      "run",
      "--lang",
      "python",
      "--mem",
      "128m",
      "-c",
      "b = bytearray(1 << 30)",
    ]);
    expect(o.code).toBe(137);
    expect(o.stderr).toMatch(/corral: killed: out of memory \(limit 128 MiB\)\n$/);
  });

  it("--out copies created files back, and refuses nothing it should keep", async () => {
    const out = mkdtempSync(path.join(dataDir, "out-"));
    const r = await corral(dataDir, [
      "run",
      "--lang",
      "shell",
      "--out",
      out,
      "-c",
      "mkdir -p sub; echo a > sub/a.txt; ln -s /etc/passwd link; mkfifo fifo; echo done",
    ]);
    expect(r.code).toBe(0);
    expect(readFileSync(path.join(out, "sub/a.txt"), "utf8")).toBe("a\n");
    expect(existsSync(path.join(out, "link"))).toBe(false);
    expect(existsSync(path.join(out, "fifo"))).toBe(false);
  });

  it("--json reports a failure as JSON on stdout too, besides the one line on stderr", async () => {
    const r = await corral(dataDir, [
      "run",
      "--json",
      "--image",
      "no-such-image",
      "--lang",
      "shell",
      "-c",
      "true",
    ]);
    oneLineError(r);
    const { error } = JSON.parse(r.stdout) as { error: { code: string; message: string } };
    expect(error.code).toBe("image_not_built");
    expect(r.stderr).toContain(error.message);
  });

  it("a relative --out is the caller's directory; skipped files are named in text mode", async () => {
    const cwd = mkdtempSync(path.join(dataDir, "cwd-"));
    const r = await new Promise<Ran>((resolve) =>
      execFile(
        process.execPath,
        [
          CLI,
          "--data-dir",
          dataDir,
          "run",
          "--lang",
          "shell",
          "--out",
          "out",
          "-c",
          "echo a > a.txt; mkdir -p d; echo b > d/b.txt; printf x > $(printf 'bad\\377name')",
        ],
        { cwd, timeout: 120_000 },
        (err, stdout, stderr) =>
          resolve({
            code: err ? ((err as { code?: number }).code ?? null) : 0,
            signal: null,
            stdout,
            stderr,
          }),
      ),
    );
    expect(r.code).toBe(0);
    expect(readFileSync(path.join(cwd, "out/a.txt"), "utf8")).toBe("a\n");
    expect(readFileSync(path.join(cwd, "out/d/b.txt"), "utf8")).toBe("b\n");
    expect(r.stderr).toMatch(/^corral: copied 2 file\(s\) to out$/m);
    expect(r.stderr).toMatch(/^corral: not copied: bad.*name \(its name cannot be written safely/m);
  });

  it("a file the host cannot write out is named, escaped; the others come out; the exit code stays", async () => {
    const out = mkdtempSync(path.join(dataDir, "out-blocked-"));
    // In the way on the host: a file where the run makes a directory, a directory where
    // it makes a file (with a name that would drive a terminal).
    writeFileSync(path.join(out, "d"), "x");
    mkdirSync(path.join(out, "z\x1b[2J"));
    const r = await corral(dataDir, [
      "run",
      "--out",
      out,
      "--lang",
      "shell",
      "-c",
      "mkdir d; echo a > d/f; echo b > ok; printf c > $'z\\e[2J'; exit 3",
    ]);
    expect(r.code).toBe(3);
    expect(readFileSync(path.join(out, "ok"), "utf8")).toBe("b\n");
    expect(r.stderr).toMatch(/^corral: copied 1 file\(s\) to /m);
    expect(r.stderr).toMatch(/^corral: not copied: d\/f \(the host could not write it: /m);
    expect(r.stderr).toMatch(
      /^corral: not copied: z\\x1b\[2J \(the host could not write it: EISDIR\)$/m,
    );
    expect(r.stderr).not.toContain("\x1b");
    // The run's record has its exit code.
    const log = JSON.parse(
      (await corral(dataDir, ["events", "--kind", "exec", "--json", "--limit", "1"])).stdout,
    );
    expect(log[0].details.exitCode).toBe(3);
  });

  it("an --out that cannot be a directory is refused before anything runs", async () => {
    const file = path.join(dataDir, "a-file");
    writeFileSync(file, "x");
    for (const out of [file, path.join(file, "below"), "/proc/corral-out"]) {
      const t = performance.now();
      const r = await corral(dataDir, ["run", "--lang", "shell", "--out", out, "-c", "echo hi"]);
      oneLineError(r);
      expect(r.stderr).toMatch(/choose another --out directory/);
      expect(r.stdout).toBe("");
      expect(performance.now() - t).toBeLessThan(2000);
    }
    expect(await gcFinds(dataDir)).toEqual([]);
  });

  it("a reader that goes away (| head) ends the run like SIGPIPE: no trace, nothing left", async () => {
    const cli = `"${process.execPath}" "${CLI}" --data-dir "${dataDir}"`;
    for (const program of ["seq 1000000", "yes"]) {
      const t = performance.now();
      const r = await shell(`${cli} run -- ${program} | head -1; echo "rc=\${?}"`);
      expect(r.stdout, program).toMatch(/^(1|y)\nrc=0\n$/);
      expect(r.stderr, program).toBe("");
      // `yes` never ends by itself: the closed pipe ended it, not the run's timeout.
      expect(performance.now() - t, program).toBeLessThan(15_000);
    }
    expect(await runcList(dataDir)).toEqual([]);
    expect(await gcFinds(dataDir)).toEqual([]);
    // The same when stderr's reader goes, or when the destination fails (a full disk).
    for (const line of [
      `${cli} run --lang shell -c 'yes >&2' 2>&1 | head -1`,
      `${cli} run --lang shell -c 'echo hi; sleep 30' > /dev/full`,
      `${cli} run --lang shell -c 'echo hi >&2; sleep 30' 2> /dev/full`,
    ]) {
      const t = performance.now();
      const r = await shell(`${line}; echo "rc=$?" >&2`);
      expect(r.stderr, line).not.toMatch(/\bat .*\.js:\d+/);
      expect(performance.now() - t, line).toBeLessThan(15_000);
    }
    expect(await runcList(dataDir)).toEqual([]);
    expect(await gcFinds(dataDir)).toEqual([]);
    // Every such run is recorded whole: its exec and its sandbox's destroy.
    const log = await corral(dataDir, ["events", "--json"]);
    const events = JSON.parse(log.stdout) as { kind: string; sandbox: string | null }[];
    const created = events.filter((e) => e.kind === "sandbox.create").map((e) => e.sandbox);
    const destroyed = events.filter((e) => e.kind === "sandbox.destroy").map((e) => e.sandbox);
    expect(destroyed.sort()).toEqual(created.sort());
    // Output written after the run (--json) that cannot be delivered is not a success
    // either: one line and 125 for a destination that fails (141 for a reader gone).
    const full = await shell(`${cli} run --json -- echo hi > /dev/full; echo rc=$?`);
    expect(full.stdout).toBe("rc=125\n");
    expect(full.stderr).toBe("corral: cannot write to stdout: ENOSPC\n");
    // Other commands stop writing quietly too.
    for (const cmd of ["events --json", "doctor", "gc --dry-run"]) {
      const r = await shell(`${cli} ${cmd} | head -c 10 >/dev/null`);
      expect(r.stderr, cmd).toBe("");
    }
  });

  it.each([
    [["run", "--lang", "cobol", "-c", "x"], /unknown language "cobol"/],
    [["run", "--lang", "python", "--mem", "lots", "-c", "x"], /memory/],
    [["run", "--lang", "python", "--timeout", "-5s", "-c", "x"], /timeout/],
    [["run", "--lang", "python", "/nonexistent/file.py"], /cannot read \/nonexistent\/file.py/],
    [["run", "--lang", "python", "--image", "no-such-image", "-c", "x"], /image/],
    [
      ["run", "--lang", "python", "--open-files", "99999999", "-c", "x"],
      /open files|hard limit|open-files/,
    ],
    [["run", "--lang", "python"], /no code/],
    [["run", "--lang", "python", "--bogus-flag", "-c", "x"], /unknown option/],
  ])("bad input %j is one line and exit 125", async (args, message) => {
    const r = await corral(dataDir, args);
    oneLineError(r);
    expect(r.stderr).toMatch(message);
  });

  it("not root is one line and exit 125", async () => {
    const r = await new Promise<Ran>((resolve) =>
      execFile(
        "setpriv",
        [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          process.execPath,
          CLI,
          "--data-dir",
          dataDir,
          "run",
          "--lang",
          "shell",
          "-c",
          "true",
        ],
        (err, stdout, stderr) =>
          resolve({
            code: err ? Number((err as { code?: number }).code) : 0,
            signal: null,
            stdout,
            stderr,
          }),
      ),
    );
    oneLineError(r);
    expect(r.stderr).toBe(
      "corral: must run as root: Corral mounts layers and drives runc (run it with sudo)\n",
    );
  });

  it("a missing runtime is one line and exit 125", async () => {
    const r = await corral(dataDir, ["run", "--lang", "shell", "-c", "true"], {
      env: { CORRAL_RUNTIME: "/nonexistent/runc" },
    });
    oneLineError(r);
    expect(r.stderr).toMatch(/runc|runtime/);
  });

  it("two runs in parallel while a third process runs gc: both succeed, nothing is left", async () => {
    const dir = testDataDir("cli-parallel");
    const runs = [1, 2].map((i) =>
      corral(dir, ["run", "--lang", "shell", "-c", `sleep 2; echo run${i}`]),
    );
    await new Promise((r) => setTimeout(r, 800));
    const gcs = [await corral(dir, ["gc"]), await corral(dir, ["gc"])];
    const [a, b] = await Promise.all(runs);
    expect(a).toMatchObject({ code: 0, stdout: "run1\n" });
    expect(b).toMatchObject({ code: 0, stdout: "run2\n" });
    for (const g of gcs) expect(g.code).toBe(0);
    expect(await runcList(dir)).toEqual([]);
    expect(await gcFinds(dir)).toEqual([]);
  });

  it.each([
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const)("%s cleans up the sandbox", async (signal, code) => {
    const dir = testDataDir(`cli-${signal}`);
    const child: ChildProcess = spawn(
      process.execPath,
      [CLI, "--data-dir", dir, "run", "--lang", "shell", "-c", "echo up; sleep 60"],
      {
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    await new Promise<void>((resolve) => child.stdout?.once("data", () => resolve()));
    expect((await runcList(dir)).length).toBe(1);
    child.kill(signal);
    const exit = await new Promise<number | null>((resolve) =>
      child.once("exit", (c) => resolve(c)),
    );
    expect(exit).toBe(code);
    expect(await runcList(dir)).toEqual([]);
    expect(await gcFinds(dir)).toEqual([]);
  });

  it("a killed CLI leaves garbage that the next start collects", async () => {
    const dir = testDataDir("cli-kill9");
    const child = spawn(
      process.execPath,
      [CLI, "--data-dir", dir, "run", "--lang", "shell", "-c", "echo up; sleep 60"],
      {
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    await new Promise<void>((resolve) => child.stdout?.once("data", () => resolve()));
    child.kill("SIGKILL");
    await new Promise((resolve) => child.once("exit", resolve));
    expect((await gcFinds(dir)).length).toBeGreaterThan(0);
    const r = await corral(dir, ["gc", "--json"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).sandboxes).toHaveLength(1);
    expect(await runcList(dir)).toEqual([]);
    expect(await gcFinds(dir)).toEqual([]);
  });
});

describe("corral gc --help and the README", () => {
  it("explain every gc option, --force as what it is (no effect yet)", async () => {
    const help = await corral(testDataDir("cli-gc-help"), ["gc", "--help"]);
    expect(help.code).toBe(0);
    const flags = [...help.stdout.matchAll(/^ {2}(--[a-z-]+)/gm)].map((m) => m[1]);
    expect(flags).toEqual(["--dry-run", "--json", "--force", "--pool"]);
    expect(help.stdout).toMatch(/--force\s+no effect yet/);
    const readme = readFileSync(path.join(ROOT, "README.md"), "utf8");
    const gcText = readme.slice(
      readme.indexOf("`corral gc` removes"),
      readme.indexOf("`corral doctor` prints"),
    );
    for (const flag of ["--dry-run", "--force", "--pool"]) expect(gcText).toContain(`\`${flag}\``);
    expect(gcText).toMatch(/`--force` changes nothing yet/);
  });
});
