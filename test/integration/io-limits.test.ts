/**
 * Block I/O limits against real sandboxes on this host (cgroup v1 hybrid): a throttled
 * read bites, O_DIRECT writes bite, the planned throttles are in the cgroup. The layer is
 * the default 1 GiB loop-backed ext4 (not tmpfs), so the sandbox's file I/O does reach a
 * block device. dd times itself inside the sandbox, so startup does not count.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LIMITS, MiB } from "../../src/core/limits.js";
import { chooseLayerKind } from "../../src/core/sandbox.js";
import { planThrottleLift } from "../../src/sandbox/runtime/block-io.js";
import { cgroupDirsWithPrefix } from "../../src/sandbox/runtime/cgroups.js";
import { processesInSandboxRange } from "../helpers/leaks.js";
import { CLI, type TestEnv, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
beforeAll(async () => {
  env = await testEnv("io-limits");
});
afterAll(() => env?.close());

/** Seconds a shell step takes inside the sandbox, from its own clock. */
const timed = (step: string) =>
  `s=$(date +%s%N); ${step} 2>/dev/null || echo FAILED; e=$(date +%s%N); echo "secs=$(( (e - s) / 1000000 ))"`;
const secs = (text: string) => Number(/secs=(\d+)/.exec(text)?.[1]) / 1000;

const WRITE_16M = "dd if=/dev/zero of=/work/f bs=1M count=16 oflag=direct";
const READ_16M = "dd if=/work/f of=/dev/null bs=1M iflag=direct";

describe("I/O limits", () => {
  it("runs on a loop-backed ext4 layer, not tmpfs", async () => {
    expect(chooseLayerKind(DEFAULT_LIMITS)).toBe("ext4-loop");
    const r = await env.run("shell", "stat -f -c %T /work; findmnt -n -o FSTYPE /");
    expect(r.stdout.text).toBe("overlayfs\noverlay\n");
  });

  it("an unthrottled direct read of 16 MiB is fast", async () => {
    const r = await env.run("shell", `${WRITE_16M} 2>/dev/null; ${timed(READ_16M)}`);
    expect(r.stdout.text).not.toMatch(/FAILED/);
    expect(secs(r.stdout.text)).toBeLessThan(2);
  });

  it("--io-read-bps 4m: a direct read of 16 MiB takes about 4 s", async () => {
    const r = await env.run("shell", `${WRITE_16M} 2>/dev/null; ${timed(READ_16M)}`, {
      ioReadBps: 4 * MiB,
    });
    expect(r.stdout.text).not.toMatch(/FAILED/);
    expect(secs(r.stdout.text)).toBeGreaterThan(3);
  });

  it("--io-write-bps 4m: a direct write of 12 MiB takes about 3 s", async () => {
    const r = await env.run(
      "shell",
      timed("dd if=/dev/zero of=/work/g bs=1M count=12 oflag=direct"),
      { ioWriteBps: 4 * MiB },
    );
    expect(r.stdout.text).not.toMatch(/FAILED/);
    expect(secs(r.stdout.text)).toBeGreaterThan(2);
  });

  it("puts the throttle on the image disk and the layer's loop device, and checks it", async () => {
    const { Sandbox } = await import("../../src/sandbox/sandbox.js");
    const sandbox = await Sandbox.create(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS, ioReadIops: 200 },
    });
    try {
      const planned = sandbox.blockIo?.throttleReadIOPSDevice ?? [];
      expect(planned.some((d) => d.major === 7)).toBe(true); // the loop device
      expect(planned.every((d) => d.rate === 200)).toBe(true);
      expect(sandbox.selfCheck?.checks.find((c) => c.name === "cgroup.io")).toEqual({
        name: "cgroup.io",
        ok: true,
        detail: "every planned throttle in force",
      });
      const seen = await sandbox.cgroup.ioThrottles();
      for (const d of planned) expect(seen.riops[`${d.major}:${d.minor}`]).toBe(200);
    } finally {
      await sandbox.destroy();
    }
  });

  it("processes blocked in throttled I/O at the timeout do not outlive the run", async () => {
    // Four processes each queue one 16 MiB direct write at 256 KiB/s: a minute of I/O
    // each, in the kernel (D state), where no signal reaches them until it is done.
    const code = [
      "import mmap, os, time",
      "buf = mmap.mmap(-1, 16 << 20)",
      "for i in range(4):",
      "    if os.fork() == 0:",
      "        fd = os.open(f'/work/d{i}', os.O_WRONLY | os.O_CREAT | os.O_DIRECT)",
      "        os.write(fd, buf)",
      "        os._exit(0)",
      "time.sleep(600)",
    ].join("\n");
    const t = performance.now();
    const r = await env.run("python", code, { ioWriteBps: 256 * 1024, timeoutMs: 3000 });
    const took = performance.now() - t;
    expect(r.killed).toBe("timeout");
    // The timeout ends the run; the stop lifts the throttles, so the blocked writers die
    // at once (without that, the stop waits 5 s for them, then falls back to runc).
    expect(took).toBeLessThan(7000);
    expect(processesInSandboxRange([env.host.tag])).toEqual([]);
    expect(await env.host.runtime.list()).toEqual([]);
    expect(await cgroupDirsWithPrefix(`corral-${env.host.tag}-`)).toEqual([]);
  }, 60_000);

  it("planThrottleLift: a rate of 0 per device on v1, max for all four on v2", () => {
    const seen = { rbps: { "7:1": 4096 }, wbps: { "7:1": 4096, "253:0": 8 }, riops: {}, wiops: {} };
    expect(planThrottleLift(1, seen)).toEqual([
      { key: "ioReadBps", line: "7:1 0" },
      { key: "ioWriteBps", line: "253:0 0" },
      { key: "ioWriteBps", line: "7:1 0" },
    ]);
    expect(planThrottleLift(2, seen)).toEqual([
      { key: "io.max", line: "253:0 rbps=max wbps=max riops=max wiops=max" },
      { key: "io.max", line: "7:1 rbps=max wbps=max riops=max wiops=max" },
    ]);
    expect(planThrottleLift(1, { rbps: {}, wbps: {}, riops: {}, wiops: {} })).toEqual([]);
  });

  it("corral run takes the --io-* flags and refuses a bad one in one line", async () => {
    const run = (...args: string[]) =>
      promisify(execFile)(process.execPath, [
        CLI,
        "--data-dir",
        env.config.dataDir,
        "run",
        ...args,
      ]);
    const ok = await run(
      "--lang",
      "shell",
      "-c",
      "true",
      "--json",
      "--io-read-iops",
      "200",
      "--io-write-bps",
      "8m",
    );
    expect(JSON.parse(ok.stdout).limits).toMatchObject({ ioReadIops: 200, ioWriteBps: 8 * MiB });
    const bad = await run("--lang", "shell", "-c", "true", "--io-read-bps", "0").catch((e) => e);
    expect(bad.code).toBe(125);
    expect(bad.stderr).toBe(
      'corral: invalid read bandwidth (--io-read-bps) "0": use "unlimited" for no limit (a rate of 0 would be ambiguous)\n',
    );
  });
});
