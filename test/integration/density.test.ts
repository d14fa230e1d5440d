/**
 * Fifty live sessions at once, each with its own Python kernel and pandas, each checking
 * that it got its own answer; all within three minutes; then everything is gone (the
 * run's leak check follows).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import { Session } from "../../src/sandbox/session.js";
import { type TestEnv, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
beforeAll(async () => {
  env = await testEnv("density");
});
afterAll(() => env?.close());

const N = 50;

async function inBatches<T>(n: number, width: number, f: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(n);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < n) {
        const i = next++;
        out[i] = await f(i);
      }
    }),
  );
  return out;
}

describe("density", () => {
  it(`${N} concurrent sessions each get their own pandas answer within 3 minutes`, {
    timeout: 240_000,
  }, async () => {
    const t0 = performance.now();
    const sessions: Session[] = [];
    try {
      await inBatches(N, 6, async () => {
        sessions.push(
          await Session.create(env.host, { image: env.image, limits: { ...DEFAULT_LIMITS } }),
        );
      });
      expect(sessions).toHaveLength(N);
      const results = await Promise.all(
        sessions.map((s, id) =>
          s.runCode(`import pandas as pd; print(pd.Series(range(10000)).sum() + ${id})`, {
            timeoutMs: 170_000,
          }),
        ),
      );
      results.forEach((r, id) => {
        expect(r.error).toBeNull();
        expect(r.stdout.text).toBe(`${49995000 + id}\n`);
      });
      expect(performance.now() - t0).toBeLessThan(180_000);
    } finally {
      await inBatches(sessions.length, 8, (i) => sessions[i]!.destroy());
    }
  });
});
