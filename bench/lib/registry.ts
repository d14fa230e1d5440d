/**
 * The registry of named benchmarks. A benchmark measures one or more figures in the same
 * run, so that each can be compared with a baseline measured right beside it. To add one,
 * write a `Bench` in bench/benches/ and list it in bench/main.ts.
 */
import type { CorralConfig } from "../../src/core/config.js";
import type { ImageRef } from "../../src/core/sandbox.js";
import type { Host } from "../../src/sandbox/host.js";
import type { Figure } from "./figures.js";

export interface BenchContext {
  /** Samples per figure (`--n`); each bench also has its own default. */
  n: number | null;
  /** The benchmark's own temporary data directory (removed at the end) and host on it. */
  config: CorralConfig;
  host: Host;
  image: ImageRef;
  /** Progress for the reader, on stderr (stdout carries the figures). */
  log(message: string): void;
}

export interface Bench {
  name: string;
  summary: string;
  /** The figures it prints, so that `--only` can name a figure as well as a bench. */
  figures: string[];
  defaultN: number;
  run(ctx: BenchContext & { n: number }): Promise<Figure[]>;
}

/** The benches `--only` selects: by bench name or by one of its figures' names. */
export function selectBenches(all: readonly Bench[], only: readonly string[]): Bench[] {
  if (only.length === 0) return [...all];
  return all.filter((b) => only.includes(b.name) || b.figures.some((f) => only.includes(f)));
}

/**
 * Run `cases` alternately (A, B, A, B, ...) so that drift on a shared machine (another
 * process, a cache warming) falls on every case alike; the first `warmup` rounds are
 * discarded. Returns each case's samples in ms.
 */
export async function interleave(
  n: number,
  warmup: number,
  cases: readonly { name: string; once: (i: number) => Promise<void> }[],
  /** Awaited before each timed run, untimed: lets background work of the last one end. */
  between: () => Promise<void> = async () => undefined,
): Promise<Map<string, number[]>> {
  const samples = new Map(cases.map((c) => [c.name, [] as number[]]));
  for (let round = 0; round < warmup + n; round++) {
    for (const c of cases) {
      await between();
      const t = performance.now();
      await c.once(round);
      const ms = performance.now() - t;
      if (round >= warmup) samples.get(c.name)!.push(ms);
    }
  }
  return samples;
}
