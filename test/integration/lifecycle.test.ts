/**
 * Tearing a sandbox down: stop goes through the sandbox's own shim (SIGTERM: it SIGKILLs
 * the container's init, the PID namespace dies with it, the shim reaps everything), so
 * it is quick and leaves no process; the fallback (runc kill, 5 s later) is not needed.
 * Once the shim has reaped a container, removing it needs no runc process (its state
 * and cgroups go directly); a container that dies by itself is left for the host to read
 * (its cgroup's OOM counter) and delete at destroy.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import { cgroupDirsWithPrefix } from "../../src/sandbox/runtime/cgroups.js";
import { loopDevicesUnder, mountsUnder } from "../../src/sandbox/runtime/mounts.js";
import { RuncRuntime } from "../../src/sandbox/runtime/runc.js";
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

  it("after a stop, removal deletes the container without starting runc", async () => {
    // The runtime is runc behind a wrapper that logs each command: real runc, counted.
    const dir = mkdtempSync(path.join(env.config.dataDir, "wrap-"));
    const log = path.join(dir, "calls");
    const wrapper = path.join(dir, "runc");
    writeFileSync(
      wrapper,
      `#!/bin/sh\nfor a in "$@"; do case "$a" in run|delete|kill) echo "$a" >> ${log};; esac; done\nexec ${env.host.config.runtime} "$@"\n`,
      { mode: 0o755 },
    );
    const runtime = new RuncRuntime(
      wrapper,
      (env.host.runtime as RuncRuntime).stateRoot,
      env.host.supervisor,
      (id) => cgroupNameFor(env.host.tag, id),
    );
    const host = { ...env.host, runtime };
    const sandbox = await Sandbox.create(host, { image: env.image, limits: { ...DEFAULT_LIMITS } });
    const cgroup = cgroupNameFor(env.host.tag, sandbox.id);
    try {
      expect((await runtime.list()).some((c) => c.id === sandbox.id)).toBe(true);
      expect((await cgroupDirsWithPrefix(cgroup)).length).toBeGreaterThan(0);
    } finally {
      await sandbox.destroy();
    }
    // runc no longer knows it, its cgroups are gone, and runc ran once: to start it.
    expect((await runtime.list()).some((c) => c.id === sandbox.id)).toBe(false);
    expect(await cgroupDirsWithPrefix(cgroup)).toEqual([]);
    expect(readFileSync(log, "utf8").split("\n").filter(Boolean)).toEqual(["run"]);
    expect(processesInSandboxRange([env.host.tag])).toEqual([]);
    rmSync(dir, { recursive: true, force: true });
  });

  it("a one-shot run whose code file cannot be written fails with that error, leaving nothing", async () => {
    const { runCode } = await import("../../src/sandbox/run-code.js");
    // /proc is mounted in the sandbox: the supervisor cannot create a file there.
    const run = runCode(env.host, {
      language: "shell",
      code: "echo ran",
      inputs: [{ path: "/proc/corral-input", data: Buffer.from("x") }],
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
    });
    await expect(run).rejects.toThrow(/corral-input/);
    expect(processesInSandboxRange([env.host.tag])).toEqual([]);
    expect(await env.host.runtime.list()).toEqual([]);
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
