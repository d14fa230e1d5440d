/**
 * Tearing a sandbox down: stop goes through the sandbox's own shim (SIGTERM: it SIGKILLs
 * the container's init, the PID namespace dies with it, the shim reaps everything), so
 * it is quick and leaves no process; the fallback (runc kill, 5 s later) is not needed.
 * After a stop the shim also deletes the container itself; a container that dies by
 * itself is left for the host to read (its cgroup's OOM counter) and delete at destroy.
 */
import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import { cgroupDirsWithPrefix } from "../../src/sandbox/runtime/cgroups.js";
import { loopDevicesUnder, mountsUnder } from "../../src/sandbox/runtime/mounts.js";
import { cgroupNameFor, Sandbox } from "../../src/sandbox/sandbox.js";
import { processesInSandboxRange } from "../helpers/leaks.js";
import { type TestEnv, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
beforeAll(async () => {
  env = await testEnv("lifecycle");
});
afterAll(() => env?.close());

describe("stop and destroy", () => {
  it("stop kills every process of a busy sandbox at once, destroy leaves nothing", async () => {
    const sandbox = await Sandbox.create(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
    });
    const cgroup = cgroupNameFor(env.host.tag, sandbox.id);
    try {
      const r = await sandbox.exec({
        argv: ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do setsid sleep 300 & done; echo started"],
        timeoutMs: 10_000,
        outputCapBytes: 1024,
      });
      expect(r.stdout.bytes().toString()).toBe("started\n");
      expect(processesInSandboxRange([env.host.tag]).length).toBeGreaterThanOrEqual(9);
      const t = performance.now();
      await sandbox.stop();
      // Far below the 5 s fallback, and below runc delete --force's 100 ms polling.
      expect(performance.now() - t).toBeLessThan(1000);
      // Every process is gone (reaped) when stop returns, not only signalled.
      expect(processesInSandboxRange([env.host.tag])).toEqual([]);
    } finally {
      await sandbox.destroy();
    }
    expect(await cgroupDirsWithPrefix(cgroup)).toEqual([]);
    expect(await mountsUnder(sandbox.paths.dir)).toEqual([]);
    expect(await loopDevicesUnder(sandbox.paths.dir)).toEqual([]);
    expect(existsSync(sandbox.paths.dir)).toBe(false);
    expect(processesInSandboxRange([env.host.tag])).toEqual([]);
  });

  it("after a stop the shim deletes the container at once, with no runc process of ours", async () => {
    const sandbox = await Sandbox.create(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
    });
    const listed = async () => (await env.host.runtime.list()).some((c) => c.id === sandbox.id);
    try {
      expect(await listed()).toBe(true);
      // The runtime's stop alone (Sandbox.stop would also start a removal of its own).
      await env.host.runtime.stop(sandbox.id);
      // Deleted with nothing else asked of runc: the shim's runc delete.
      const deadline = Date.now() + 5000;
      while ((await listed()) && Date.now() < deadline) await sleep(20);
      expect(await listed()).toBe(false);
    } finally {
      await sandbox.destroy();
    }
    expect(await cgroupDirsWithPrefix(cgroupNameFor(env.host.tag, sandbox.id))).toEqual([]);
  });

  it("a container that dies by itself is kept (its cgroup readable) until destroy", async () => {
    const sandbox = await Sandbox.create(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
    });
    const cgroup = cgroupNameFor(env.host.tag, sandbox.id);
    try {
      const init = (await env.host.runtime.list()).find((c) => c.id === sandbox.id);
      expect(init?.pid).toBeGreaterThan(0);
      process.kill(init!.pid, "SIGKILL");
      const deadline = Date.now() + 5000;
      const status = async () =>
        (await env.host.runtime.list()).find((c) => c.id === sandbox.id)?.status;
      while ((await status()) === "running" && Date.now() < deadline) await sleep(20);
      await sleep(200); // the shim would have deleted it by now, had it been asked to
      expect(await status()).toBe("stopped");
      expect((await cgroupDirsWithPrefix(cgroup)).length).toBeGreaterThan(0);
      expect(sandbox.cgroup.usageNow().cpuUs).not.toBeNull();
    } finally {
      await sandbox.destroy();
    }
    expect((await env.host.runtime.list()).some((c) => c.id === sandbox.id)).toBe(false);
    expect(await cgroupDirsWithPrefix(cgroup)).toEqual([]);
    expect(await mountsUnder(sandbox.paths.dir)).toEqual([]);
    expect(await loopDevicesUnder(sandbox.paths.dir)).toEqual([]);
  });
});

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
