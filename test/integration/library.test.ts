/**
 * The library's entry points as a caller uses them (src/index.ts): options checked, the
 * warm pool's handle, and the host kept open for sessions a closed pool handed out.
 */
import { describe, expect, it } from "vitest";
import { createSandbox, createWarmPool } from "../../src/index.js";
import { testDataDir } from "../helpers/sandbox.js";

describe("createSandbox", () => {
  it("refuses a misspelt option or limit instead of ignoring it", async () => {
    const dataDir = testDataDir("library");
    await expect(createSandbox({ dataDir, limits: { memory: "1g" } as never })).rejects.toThrow(
      /^unknown limits key "memory": expected one of mem, cpus/,
    );
    await expect(createSandbox({ dataDir, idleTTL: 5 } as never)).rejects.toThrow(
      /unknown createSandbox options key "idleTTL"/,
    );
    await expect(createSandbox({ dataDir, limits: { mem: "lots" } })).rejects.toThrow(/memory/);
  });

  it("a limit given as a number is read as the CLI reads it", async () => {
    const s = await createSandbox({
      dataDir: testDataDir("library"),
      limits: { pids: 64 } as never,
    });
    try {
      expect((await s.sandbox.cgroup.limits()).pids).toBe(64);
    } finally {
      await s.destroy();
    }
  });
});

describe("createWarmPool", () => {
  it("returns the pool itself: take, state, close; a session outlives the pool's close", async () => {
    const pool = await createWarmPool({ dataDir: testDataDir("library"), size: 1 });
    await pool.whenFull();
    const s = await pool.take({ envs: { WHO: "caller" } });
    await pool.close();
    await expect(pool.take()).rejects.toThrow(/closed/);
    // The session handed out still works (its host stays open until it ends).
    const r = await s.runCode("import os\nos.environ['WHO']");
    expect(r.results[0]?.data["text/plain"]).toBe("'caller'");
    await s.destroy();
  });
});
