/** The `resources` group of ../shared/cases/hostile.yaml, plus exit and kill semantics. */
import { readFileSync, statfsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dataTag } from "../../src/core/config.js";
import { DEFAULT_LIMITS, GiB, MiB } from "../../src/core/limits.js";
import { Sandbox } from "../../src/sandbox/sandbox.js";
import { processesInSandboxRange } from "../helpers/leaks.js";
import { type TestEnv, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
beforeAll(async () => {
  env = await testEnv("resources");
});
afterAll(() => env?.close());

const hostProcessCount = () => readFileSync("/proc/loadavg", "utf8").split(" ")[3]?.split("/")[1];
const freeDisk = () => {
  const s = statfsSync(env.config.dataDir);
  return s.bavail * s.bsize;
};

describe("exit status and kills", () => {
  it("kill -9 $$ is exit 137 with killed null (not an OOM, not a timeout)", async () => {
    const r = await env.run("shell", "echo before; kill -9 $$");
    expect(r.stdout.text).toBe("before\n");
    expect(r.exitCode).toBe(137);
    expect(r.killed).toBeNull();
    expect(r.sandboxKilled).toBe(false);
  });

  it("timeout-precision: a 3 s timeout returns between 3 and 4 s with killed timeout", async () => {
    const t = performance.now();
    const r = await env.run("python", "import time; time.sleep(10)", { timeoutMs: 3000 });
    const took = performance.now() - t;
    expect(r.killed).toBe("timeout");
    expect(r.exitCode).toBe(137);
    expect(took).toBeGreaterThanOrEqual(3000);
    expect(took).toBeLessThan(4500);
  });

  it("self-stop: a stopped shell is killed at its timeout", async () => {
    const r = await env.run("shell", "kill -STOP $$", { timeoutMs: 2000 });
    expect(r.killed).toBe("timeout");
  });
});

describe("resources", () => {
  it("memory-balloon: killed oom, reported as such", async () => {
    const r = await env.run("python", "b = bytearray(2 * 1024**3)", { memoryBytes: 256 * MiB });
    expect(r.killed).toBe("oom");
    expect(r.exitCode).toBe(137);
    expect(r.peakMemoryBytes).toBeGreaterThan(200 * MiB);
  });

  it("memory-balloon after lowering its own oom score: the sandbox is reported killed by oom", async () => {
    // User code may lower its score back to 0 (the supervisor's); the OOM killer may then
    // pick the supervisor: either way the result must say oom.
    const r = await env.run(
      "python",
      "open('/proc/self/oom_score_adj','w').write('0')\nb = bytearray(2 * 1024**3)",
      { memoryBytes: 256 * MiB },
    );
    expect(r.killed).toBe("oom");
    expect(r.exitCode).toBe(137);
  });

  it("fork-bomb: contained at the pids limit, host process count stable", async () => {
    const before = Number(hostProcessCount());
    // The bomb's first shell returns at once, leaving its descendants behind; a watcher
    // that needs no fork (it reads /proc) counts them while they push at the limit.
    const watcher = [
      "import os, subprocess, time",
      "subprocess.Popen(['bash', '-c', ':(){ :|:& };:'], stderr=subprocess.DEVNULL)",
      "peak = 0",
      "for _ in range(30):",
      "    time.sleep(0.1)",
      "    peak = max(peak, sum(1 for p in os.listdir('/proc') if p.isdigit()))",
      "print('peak', peak)",
    ].join("\n");
    const t = performance.now();
    const r = await env.run("python", watcher, { pids: 64, timeoutMs: 10_000 });
    const peak = Number(/peak (\d+)/.exec(r.stdout.text)?.[1]);
    expect(peak).toBeGreaterThan(40); // the bomb did run...
    expect(peak).toBeLessThanOrEqual(64); // ...and stopped at the limit
    // Nothing of the bomb is left on the host: no process of this data directory's
    // sandboxes (other test files and other runs on the machine may fork meanwhile, so
    // the host-wide count is only a loose bound).
    expect(processesInSandboxRange([dataTag(env.config.dataDir)])).toEqual([]);
    expect(Number(hostProcessCount())).toBeLessThan(before + 200);
    // destroy (inside run) stayed quick although 60-odd processes were alive
    expect(performance.now() - t).toBeLessThan(10_000);
  });

  it("cpu-spinners: throttled to half a core (CPU/wall between 0.4 and 0.6)", async () => {
    const r = await env.run(
      "python",
      "import threading\ndef spin():\n    while True: pass\nfor _ in range(16): threading.Thread(target=spin, daemon=True).start()\nspin()",
      { cpus: 0.5, timeoutMs: 5000 },
    );
    expect(r.killed).toBe("timeout");
    const ratio = (r.cpuMs ?? 0) / 5000;
    expect(ratio).toBeGreaterThan(0.4);
    expect(ratio).toBeLessThan(0.6);
  });

  it.each([["/tmp"], ["/work"], ["/root"]])(
    "disk-fill: ENOSPC at about 100 MB in %s, host disk unchanged",
    async (dir) => {
      const free = freeDisk();
      const r = await env.run(
        "shell",
        `dd if=/dev/zero of=${dir}/fill bs=1M count=1000 2>&1; echo rc=$?; du -sm ${dir}/fill`,
        {
          diskBytes: 100 * MiB,
        },
      );
      expect(r.stdout.text).toMatch(/No space left on device/);
      expect(r.stdout.text).toMatch(/rc=1/);
      const mb = Number(/\n(\d+)\s+\S+fill\n$/.exec(r.stdout.text)?.[1]);
      expect(mb).toBeGreaterThan(80);
      expect(mb).toBeLessThanOrEqual(100);
      expect(Math.abs(freeDisk() - free)).toBeLessThan(50 * MiB);
    },
  );

  it("disk-fill with a large disk uses a loop-backed layer and still stops there", async () => {
    const r = await env.run(
      "shell",
      "for i in 1 2 3; do fallocate -l 900M /work/f$i 2>&1; echo rc=$?; done",
      {
        diskBytes: 2 * GiB,
      },
    );
    expect(r.stdout.text).toMatch(/^rc=0\nrc=0\n.*No space left on device\nrc=1\n$/s);
  });

  it("inode-fill: stops at the inode cap, teardown stays quick", async () => {
    const t = performance.now();
    const r = await env.run(
      "shell",
      // `: >` is a builtin: no fork per file, so the run's time is the file system's.
      "mkdir d && cd d && i=0; while : > f$i 2>/dev/null; do i=$((i+1)); done; echo stopped at $i",
      { diskBytes: 100 * MiB, inodes: 2000, timeoutMs: 30_000 },
    );
    expect(r.killed).toBeNull();
    const n = Number(/stopped at (\d+)/.exec(r.stdout.text)?.[1]);
    expect(n).toBeGreaterThan(1000);
    expect(n).toBeLessThanOrEqual(2000);
    // Teardown (unmounting a full layer) is what follows the run's own wall time.
    const teardown = performance.now() - t - r.durationMs;
    expect(teardown).toBeLessThan(5_000);
  });

  it("fd-exhaustion: EMFILE inside, as an OSError", async () => {
    const r = await env.run("python", "fs = []\nwhile True: fs.append(open('/dev/null'))");
    expect(r.exitCode).toBe(1);
    expect(r.stderr.text).toMatch(/OSError: \[Errno 24\] Too many open files/);
  });

  it("output-flood: truncated with a flag and the original size, host memory bounded", async () => {
    const rss = process.memoryUsage().rss;
    const r = await env.run("python", 'print("x" * 50_000_000)');
    expect(r.stdout.truncated).toBe(true);
    expect(r.stdout.bytes).toBe(50_000_001);
    expect(r.stdout.text.length).toBe(1024 * 1024);
    expect(process.memoryUsage().rss - rss).toBeLessThan(200 * MiB);
    const next = await env.run("shell", "echo next");
    expect(next.stdout.text).toBe("next\n");
  });

  it("output-flood: what passes the cap stays in the sandbox; the supervisor counts it", async () => {
    const sandbox = await Sandbox.create(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
    });
    try {
      const before = sandbox.supervisorBytesRead;
      const r = await sandbox.exec({
        argv: ["sh", "-c", "head -c 300000000 /dev/zero; head -c 5000000 /dev/zero >&2"],
        timeoutMs: 60_000,
        outputCapBytes: MiB,
      });
      expect(r.exitCode).toBe(0);
      expect([r.stdout.total, r.stdout.kept, r.stdout.truncated]).toEqual([300_000_000, MiB, true]);
      expect([r.stderr.total, r.stderr.kept]).toEqual([5_000_000, MiB]);
      // Two capped streams and the frames around them, not 305 MB.
      expect(sandbox.supervisorBytesRead - before).toBeLessThan(3 * MiB);
    } finally {
      await sandbox.destroy();
    }
  });

  it("stderr-before-stdout: no deadlock", async () => {
    const r = await env.run(
      "python",
      'import sys\nsys.stderr.write("e" * 10_000_000); sys.stdout.write("done")',
    );
    expect(r.stdout.text).toBe("done");
    expect(r.stderr.truncated).toBe(true);
    expect(r.stderr.bytes).toBe(10_000_000);
  });

  it("endless-line: capture capped, killed at the timeout", async () => {
    const r = await env.run("shell", "cat /dev/urandom", { timeoutMs: 3000 });
    expect(r.killed).toBe("timeout");
    expect(r.stdout.truncated).toBe(true);
    expect(r.stdout.bytes).toBeGreaterThan(1024 * 1024);
  });

  it("rlimits: open files and file size are enforced", async () => {
    const r = await env.run(
      "shell",
      "ulimit -n; ulimit -f; head -c 3M /dev/zero > /tmp/big; echo rc=$?",
      {
        openFiles: 64,
        fileSizeBytes: 2 * MiB,
      },
    );
    // bash reports ulimit -f in 1024-byte blocks
    expect(r.stdout.text).toMatch(/^64\n2048\n/);
    expect(r.stdout.text).toMatch(/rc=(1|153)/);
  });
});
