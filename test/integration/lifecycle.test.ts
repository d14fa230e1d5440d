/**
 * Tearing a sandbox down: stop goes through the sandbox's own shim (SIGTERM: it SIGKILLs
 * the container's init, the PID namespace dies with it, the shim reaps everything), so
 * it is quick and leaves no process; the fallback (runc kill, 5 s later) is not needed.
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
});
