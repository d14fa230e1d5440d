/**
 * The warm pool: ready sandboxes with a running Python kernel, handed out at once with
 * the caller's environment, never reused, replaced in the background.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/core/config.js";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import { type Host, openHost } from "../../src/sandbox/host.js";
import { mountsUnder } from "../../src/sandbox/runtime/mounts.js";
import { poolKey, WarmPool } from "../../src/sandbox/warm-pool.js";
import { type TestEnv, testDataDir, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
beforeAll(async () => {
  env = await testEnv("warm-pool");
});
afterAll(() => env?.close());

describe("poolKey", () => {
  it("depends on image, limits and workdir, not on the order of the limits", () => {
    const image = { name: "default", digest: "sha256:a", rootfs: "/x", env: {} };
    const base = poolKey({ image, limits: { ...DEFAULT_LIMITS } });
    const reordered = Object.fromEntries(
      Object.entries(DEFAULT_LIMITS).reverse(),
    ) as typeof DEFAULT_LIMITS;
    expect(poolKey({ image, limits: reordered })).toBe(base);
    expect(poolKey({ image, limits: { ...DEFAULT_LIMITS, memoryBytes: 1 << 30 } })).not.toBe(base);
    expect(
      poolKey({ image: { ...image, digest: "sha256:b" }, limits: { ...DEFAULT_LIMITS } }),
    ).not.toBe(base);
    expect(poolKey({ image, limits: { ...DEFAULT_LIMITS }, workdir: "/tmp" })).not.toBe(base);
  });
});

describe("warm pool", () => {
  it("hands out a ready sandbox at once, with the caller's envs; refills; never reuses", async () => {
    const pool = new WarmPool(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
      size: 2,
    });
    try {
      await pool.whenFull();
      expect(pool.state()).toMatchObject({ ready: 2, handedOut: 0, misses: 0 });
      const stateFile = path.join(
        env.config.dataDir,
        "warm-pool",
        `${pool.key}-${process.pid}.json`,
      );
      expect(JSON.parse(readFileSync(stateFile, "utf8"))).toMatchObject({ size: 2, ready: 2 });

      let t0 = performance.now();
      const s = await pool.take({
        envs: { CALLER: "me" },
        metadata: { who: "test" },
        idleTtlMs: 60_000,
      });
      const takeMs = performance.now() - t0;
      t0 = performance.now();
      const r = await s.runCode("import os\nprint(os.environ['CALLER'])");
      const firstMs = performance.now() - t0;
      expect(r.stdout.text).toBe("me\n");
      // The kernel was already running: no 0.3 s IPython start on the first call.
      expect(takeMs).toBeLessThan(100);
      expect(firstMs).toBeLessThan(150);
      expect(r.executionCount).toBeGreaterThan(0);
      expect((await s.commands.run("echo $CALLER")).stdout.text).toBe("me\n");
      expect(s.metadata).toEqual({ who: "test" });
      expect(s.isPooled).toBe(false);
      const id = s.id;
      await s.destroy();

      await pool.whenFull();
      expect(pool.state()).toMatchObject({ ready: 2, handedOut: 1 });
      // The destroyed sandbox is gone for good; the pool holds two others.
      const again = [await pool.take(), await pool.take()];
      expect(again.map((x) => x.id)).not.toContain(id);
      expect(new Set(again.map((x) => x.id)).size).toBe(2);
      // A third, while the pool refills, is a miss: a fresh sandbox, still usable.
      const third = await pool.take();
      expect((await third.runCode("1 + 1")).results[0]?.data["text/plain"]).toBe("2");
      expect(pool.state().misses + pool.state().handedOut).toBe(4);
      await Promise.all([...again, third].map((x) => x.destroy()));
    } finally {
      await pool.close();
    }
    // Closing destroys what waited and removes the state file.
    expect(readdirSync(path.join(env.config.dataDir, "warm-pool"))).toEqual([]);
    expect(existsSync(path.join(env.config.dataDir, "warm-pool"))).toBe(true);
  });

  it("a pooled sandbox has no idle timer until handed out", async () => {
    const pool = new WarmPool(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
      size: 1,
    });
    try {
      await pool.whenFull();
      const s = await pool.take({ idleTtlMs: 500 });
      await new Promise((r) => setTimeout(r, 900));
      expect(s.endReason).toBe("idle");
    } finally {
      await pool.close();
    }
  });

  it("refuses bad adoption options without leaking the sandbox", async () => {
    const pool = new WarmPool(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
      size: 1,
    });
    try {
      await pool.whenFull();
      await expect(pool.take({ envs: { "BAD NAME": "x" } })).rejects.toThrow(/invalid environment/);
      await expect(pool.take({ idleTtlMs: -5 })).rejects.toThrow(/positive/);
      // A misspelt option is refused, not ignored; both names of the idle time must agree.
      await expect(pool.take({ idleTTL: 5 } as never)).rejects.toThrow(
        /unknown take options key "idleTTL"/,
      );
      await expect(pool.take({ idleTtl: 5, idleTtlMs: 6 })).rejects.toThrow(/not both/);
    } finally {
      await pool.close();
    }
  });

  it("take takes createSandbox's idleTtl", async () => {
    const pool = new WarmPool(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
      size: 1,
    });
    try {
      await pool.whenFull();
      const s = await pool.take({ idleTtl: 400 });
      const deadline = Date.now() + 10_000;
      while (s.endReason === null && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
      expect(s.endReason).toBe("idle");
    } finally {
      await pool.close();
    }
  });

  it("a take under way and a second close keep the host until they are done", async () => {
    for (const scenario of ["take during close", "close twice"] as const) {
      const own = await poolOnItsOwnHost(scenario === "take during close" ? 0 : 2);
      if (scenario === "take during close") {
        // Nothing is ready: the take creates a sandbox while the pool closes.
        const taking = own.pool.take();
        await own.pool.close();
        const s = await taking;
        expect(own.released()).toBe(false);
        const r = await s.runCode("1 + 1");
        expect(r.results[0]?.data["text/plain"]).toBe("2");
        await s.destroy();
      } else {
        await own.pool.whenFull();
        await Promise.all([own.pool.close(), own.pool.close()]);
      }
      await own.waitReleased();
      expect(own.released(), scenario).toBe(true);
      await own.check(async (check) => {
        expect(await check.runtime.list(), scenario).toEqual([]);
        expect(readdirSync(check.sandboxesDir), scenario).toEqual([]);
        // Every sandbox made has its destroy recorded (none was cut off by a closed host).
        const kinds = check.events.list().map((e) => e.kind);
        const count = (k: string) => kinds.filter((x) => x === k).length;
        expect(count("sandbox.destroy"), scenario).toBe(count("sandbox.create"));
      });
    }
  });

  it("closed while a taken session is still being destroyed: the host goes only after the refill", async () => {
    const own = await poolOnItsOwnHost(1);
    await own.pool.whenFull();
    const s = await own.pool.take();
    // The take started a refill; the session's end would release the host at once.
    const destroyed = s.destroy();
    await own.pool.close();
    await destroyed;
    await own.waitReleased();
    expect(own.released()).toBe(true);
    // Nothing of the refill (or anything else) was left behind by a host closed under it.
    await own.check(async (check) => {
      expect(await check.runtime.list()).toEqual([]);
      expect(await mountsUnder(check.config.dataDir)).toEqual([]);
      expect(readdirSync(check.sandboxesDir)).toEqual([]);
    });
  });
});

/**
 * A pool on a host of its own, which the pool closes when it releases it (as
 * createWarmPool's does); `check` looks at what is left through a second host.
 */
async function poolOnItsOwnHost(size: number) {
  const config = loadConfig({ dataDir: testDataDir("warm-release") });
  const host = await openHost(config);
  let released = false;
  const pool = new WarmPool(host, { image: env.image, limits: { ...DEFAULT_LIMITS }, size }, () => {
    released = true;
    host.close();
  });
  return {
    pool,
    released: () => released,
    async waitReleased() {
      const deadline = Date.now() + 10_000;
      while (!released && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    },
    async check(look: (check: Host) => Promise<void>) {
      const check = await openHost(config);
      try {
        await look(check);
      } finally {
        check.close();
      }
    },
  };
}
