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
