/**
 * The `lifecycle` group of ../shared/cases/hostile.yaml that applies to one-shot runs and
 * was not tested yet: orphan-child-at-timeout, setsid-daemon, silent-long-command.
 * (timeout-precision, self-stop and exit-code-fidelity are in test/integration; the
 * session cases belong with the session tests.)
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import { Sandbox } from "../../src/sandbox/sandbox.js";
import { corral } from "../helpers/cli.js";
import { processesInSandboxRange } from "../helpers/leaks.js";
import { type TestEnv, testDataDir, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
beforeAll(async () => {
  env = await testEnv("lifecycle");
});
afterAll(() => env?.close());

/** Processes of this file's sandboxes (or of none) on the host, seen from the host. */
const hostProcesses = () => processesInSandboxRange([env.host.tag]);

async function withSandbox<T>(fn: (s: Sandbox) => Promise<T>): Promise<T> {
  const sandbox = await Sandbox.create(env.host, { image: env.image, limits: DEFAULT_LIMITS });
  try {
    return await fn(sandbox);
  } finally {
    await sandbox.destroy();
  }
}

async function exec(sandbox: Sandbox, argv: string[], timeoutMs = 10_000) {
  const r = await sandbox.exec({ argv, timeoutMs, outputCapBytes: 1 << 20 });
  return { ...r, out: r.stdout.bytes().toString(), err: r.stderr.bytes().toString() };
}

/** The command names of every process in the sandbox but the supervisor and `ps` itself. */
async function sandboxProcesses(sandbox: Sandbox): Promise<string[]> {
  const r = await exec(sandbox, ["ps", "-e", "-o", "pid=,comm="]);
  expect(r.exitCode).toBe(0);
  return r.out
    .trim()
    .split("\n")
    .map((l) => l.trim().split(/\s+/))
    .filter(([pid, comm]) => pid !== "1" && comm !== "ps")
    .map(([, comm]) => comm ?? "");
}

describe("lifecycle", () => {
  it("orphan-child-at-timeout: timeout within 2 s + grace, and no sleep is left", async () => {
    const code = [
      "import subprocess, time",
      'subprocess.Popen(["sleep", "600"])',
      "time.sleep(600)",
    ].join("\n");
    await withSandbox(async (sandbox) => {
      await sandbox.writeFile("/tmp/orphan.py", code);
      const r = await exec(sandbox, ["python3", "/tmp/orphan.py"], 2000);
      expect(r.killed).toBe("timeout");
      expect(r.exitCode).toBe(137);
      expect(r.durationMs).toBeGreaterThanOrEqual(2000);
      // A generous grace: the machine is shared; the point is "not 600 s, not hung".
      expect(r.durationMs).toBeLessThan(2000 + 2500);
      expect(await sandboxProcesses(sandbox)).toEqual([]);
    });
    expect(hostProcesses()).toEqual([]);
  });

  it("setsid-daemon: `started` returns at once; the run's end leaves no process on the host", async () => {
    const t = performance.now();
    const r = await env.run("shell", "setsid nohup sleep 600 >/dev/null 2>&1 & echo started");
    expect(r.stdout.text).toBe("started\n");
    expect(r.exitCode).toBe(0);
    expect(r.killed).toBeNull();
    // At once: the daemon holds neither the output pipes nor the run (30 s timeout).
    expect(r.durationMs).toBeLessThan(10_000);
    expect(performance.now() - t).toBeLessThan(15_000);
    expect(hostProcesses()).toEqual([]);
  });

  it("setsid-daemon: the daemon really outlives its shell, until the sandbox is destroyed", async () => {
    await withSandbox(async (sandbox) => {
      const r = await exec(sandbox, [
        "bash",
        "-c",
        "setsid nohup sleep 600 >/dev/null 2>&1 & echo started",
      ]);
      expect(r.out).toBe("started\n");
      expect(r.killed).toBeNull();
      // It left the shell's session (the supervisor's per-process kill would miss it)...
      // (The shell can exit while its child is still nohup, before nohup execs sleep.)
      const deadline = Date.now() + 5000;
      let seen = await sandboxProcesses(sandbox);
      while (seen.join() !== "sleep" && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
        seen = await sandboxProcesses(sandbox);
      }
      expect(seen).toEqual(["sleep"]);
      // ...and is a real host process, in the sandbox's id range, while the sandbox lives.
      expect(hostProcesses().some((p) => /\(sleep\)/.test(p))).toBe(true);
    });
    // destroy removed it with everything else.
    expect(hostProcesses()).toEqual([]);
  });

  it("silent-long-command: 150 s of silence, then `done` and exit 3, through the CLI", async () => {
    const dataDir = testDataDir("lifecycle-silent");
    const r = await corral(
      [
        "--data-dir",
        dataDir,
        "run",
        "--lang",
        "shell",
        "--timeout",
        "300s",
        "-c",
        "sleep 150; echo done; exit 3",
      ],
      { timeoutMs: 290_000 },
    );
    expect(r).toMatchObject({ code: 3, stdout: "done\n", stderr: "" });
  }, 300_000);
});
