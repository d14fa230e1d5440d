/**
 * The layer pool against real sandboxes: a create with a warm pool takes a pre-made layer
 * instead of running mkfs, the pool refills in the background, an entry is used once,
 * an empty or disabled pool falls back to mkfs, gc removes what it owns when asked and
 * what is stale, and two processes never claim the same entry.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/core/config.js";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import { collectGarbage } from "../../src/sandbox/gc.js";
import { openHost } from "../../src/sandbox/host.js";
import { poolEntryName } from "../../src/sandbox/runtime/layer-pool.js";
import { Sandbox } from "../../src/sandbox/sandbox.js";
import { ROOT, type TestEnv, testDataDir, testEnv } from "../helpers/sandbox.js";

const shape = { diskBytes: DEFAULT_LIMITS.diskBytes, inodes: DEFAULT_LIMITS.inodes };

let env: TestEnv;
beforeAll(async () => {
  env = await testEnv("layer-pool");
});
afterAll(() => env?.close());

const pool = () => {
  const p = env.host.layerPool;
  if (!p) throw new Error("the test host has no layer pool");
  return p;
};
const readyNames = () =>
  existsSync(pool().dir)
    ? readdirSync(pool().dir).filter((n) => n.startsWith(`v1-${shape.diskBytes}-`))
    : [];
const createEvents = () =>
  env.host.events
    .list()
    .filter((e) => e.kind === "sandbox.create" && e.outcome === "ok")
    .map((e) => e.details as { layerSource?: string });

describe("layer pool", () => {
  it("is on by default with two of the default layer", () => {
    expect(pool().perShape).toBe(2);
    expect(pool().shapes).toEqual([shape]);
  });

  it("a create with a warm pool takes a pre-made layer and runs no mkfs; the pool refills", async () => {
    await pool().fill();
    const before = readyNames();
    expect(before).toHaveLength(2);
    const stats = { ...pool().stats };
    const sandbox = await Sandbox.create(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
    });
    try {
      expect(sandbox.layerSource).toBe("pool");
      expect(createEvents().at(-1)?.layerSource).toBe("pool");
      expect(pool().stats.claimed).toBe(stats.claimed + 1);
      expect(pool().stats.missed).toBe(stats.missed);
      // The entry moved into the sandbox: one fewer ready name (until the refill).
      const claimed = before.filter((n) => !readyNames().includes(n));
      expect(claimed.length).toBeLessThanOrEqual(1);
      expect(statSync(sandbox.paths.layerImage).size).toBe(shape.diskBytes);
      const r = await sandbox.exec({
        argv: ["sh", "-c", "echo data > /work/x && df -k / | tail -1"],
        timeoutMs: 10_000,
        outputCapBytes: 4096,
      });
      expect(r.exitCode).toBe(0);
      // The refill, in the background, brings the pool back to two.
      await pool().fill();
      expect(readyNames()).toHaveLength(2);
      expect(pool().stats.made).toBeGreaterThan(stats.made);
    } finally {
      await sandbox.destroy();
    }
    // Used once: the written-to layer went with its sandbox, and never came back.
    expect(existsSync(sandbox.paths.dir)).toBe(false);
    const usedOnce = before.filter((n) => !readyNames().includes(n));
    expect(usedOnce).toHaveLength(1);
  });

  it("an empty pool falls back to mkfs and starts a refill", async () => {
    await collectGarbage(env.host, { dryRun: false, drainPool: true });
    expect(readyNames()).toHaveLength(0);
    const missed = pool().stats.missed;
    const refilled = pool().waitForEntry(30_000);
    const r = await env.run("shell", "echo ok");
    expect(r.stdout.text).toBe("ok\n");
    expect(createEvents().at(-1)?.layerSource).toBe("mkfs");
    expect(pool().stats.missed).toBe(missed + 1);
    expect(await refilled).toBe(true);
  });

  it("a pool of 0 is off: mkfs every time, no pool directory", async () => {
    const config = loadConfig({ dataDir: testDataDir("layer-pool-off"), layerPool: "0" });
    const host = await openHost(config);
    try {
      expect(host.layerPool).toBeNull();
      const sandbox = await Sandbox.create(host, {
        image: env.image,
        limits: { ...DEFAULT_LIMITS },
      });
      expect(sandbox.layerSource).toBe("mkfs");
      await sandbox.destroy();
      expect(existsSync(path.join(config.dataDir, "pool"))).toBe(false);
    } finally {
      host.close();
    }
  });

  it("a tmpfs layer never touches the pool", async () => {
    const stats = { ...pool().stats };
    const sandbox = await Sandbox.create(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS, diskBytes: 64 * 1024 * 1024 },
    });
    await sandbox.destroy();
    expect(sandbox.layerSource).toBe("tmpfs");
    expect(pool().stats.claimed + pool().stats.missed).toBe(stats.claimed + stats.missed);
  });

  it("gc keeps ready entries, removes stale and half-made ones, and drains with --pool", async () => {
    await pool().fill();
    const dir = pool().dir;
    const stale = [
      `.making-${poolEntryName(shape, "00000000dead")}`, // a dead filler's partial file
      `v0-${shape.diskBytes}-${shape.inodes}-00000000beef.img`, // an older format
      poolEntryName({ diskBytes: 2 * shape.diskBytes, inodes: shape.inodes }, "00000000cafe"), // a shape not pooled
    ];
    for (const n of stale) writeFileSync(path.join(dir, n), "");
    writeFileSync(path.join(dir, "README"), "not the pool's");
    const dry = await collectGarbage(env.host, { dryRun: true });
    expect(dry.poolFiles.map((f) => path.basename(f)).sort()).toEqual([...stale].sort());
    expect(dry.poolReady).toBe(2);
    const cli = (...args: string[]) =>
      promisify(execFile)(process.execPath, [
        path.join(ROOT, "bin/corral.js"),
        "--data-dir",
        env.config.dataDir,
        "gc",
        ...args,
      ]);
    const gc = await cli();
    expect(gc.stdout).toMatch(/kept 2 ready layer pool entries \(corral gc --pool removes them\)/);
    expect(readdirSync(dir).sort()).toEqual(["README", ...readyNames()].sort());
    const drained = JSON.parse((await cli("--pool", "--json")).stdout) as { poolFiles: string[] };
    expect(drained.poolFiles).toHaveLength(2);
    expect(readdirSync(dir)).toEqual(["README"]);
  });

  it("two processes sharing a pool never claim the same entry", async () => {
    const dir = path.join(testDataDir("layer-pool-race"), "pool");
    mkdirSync(dir, { recursive: true });
    const names = Array.from({ length: 200 }, (_, i) =>
      poolEntryName(shape, i.toString(16).padStart(12, "0")),
    );
    for (const n of names) writeFileSync(path.join(dir, n), n);
    const claimer = `
      import { claimPoolEntry } from ${JSON.stringify(path.join(ROOT, "dist/src/sandbox/runtime/layer-pool.js"))};
      import { existsSync, mkdirSync } from "node:fs";
      const [dir, me, other] = process.argv.slice(1);
      const shape = ${JSON.stringify(shape)};
      mkdirSync(dir + "/" + me);
      // Start together: on a loaded machine one process could otherwise take every entry
      // before the other has even started, and the race would not be tested.
      while (!existsSync(dir + "/" + other)) await new Promise((r) => setTimeout(r, 2));
      const got = [];
      for (let i = 0; ; i++) {
        const name = await claimPoolEntry(dir, [shape], shape, dir + "/" + me + "/" + i);
        if (name === null) break;
        got.push(name);
      }
      console.log(JSON.stringify(got));`;
    const run = (me: string, other: string) =>
      promisify(execFile)(process.execPath, ["--input-type=module", "-e", claimer, dir, me, other]);
    const [a, b] = await Promise.all([run("a", "b"), run("b", "a")]);
    const gotA = JSON.parse(a.stdout) as string[];
    const gotB = JSON.parse(b.stdout) as string[];
    expect(gotA.length + gotB.length).toBe(200);
    expect(new Set([...gotA, ...gotB]).size).toBe(200);
    expect(gotA.length).toBeGreaterThan(0);
    expect(gotB.length).toBeGreaterThan(0);
  });
});
