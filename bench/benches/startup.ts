/**
 * Startup: the library's whole one-shot path against raw runc on the same config.
 *
 * - `runc_run_true`: `runc run` of /bin/true with the very config.json Corral generated
 *   for a sandbox (its namespaces, id maps, seccomp profile, cgroups, mounts), on that
 *   sandbox's already-mounted root, in a runc root of its own; only the process is
 *   replaced by /bin/true, and there is no supervisor socket. The floor: what runc costs.
 * - `create_run_destroy`: runCode(shell, "true"): create the sandbox (layer, bundle, runc,
 *   supervisor, self-check), run `true` through the supervisor, collect files, destroy.
 *
 * They run interleaved, each after the layer pool's background work has finished. The
 * phases of create_run_destroy are printed too, as value figures (p50 ms of each step),
 * to show where the time goes.
 */
import { spawn } from "node:child_process";
import { mkdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import { runCode } from "../../src/sandbox/run-code.js";
import {
  layOutSandbox,
  ownNewSandbox,
  PhaseTimer,
  removeSandboxResources,
} from "../../src/sandbox/sandbox.js";
import { type Figure, percentile } from "../lib/figures.js";
import { type Bench, type BenchContext, interleave } from "../lib/registry.js";

function runcRunTrue(runtime: string, root: string, bundle: string, id: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(runtime, ["--root", root, "run", "--bundle", bundle, id], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (c: string) => {
      stderr += c;
    });
    child.once("error", reject);
    child.once("exit", (code) =>
      code === 0 ? resolve() : reject(new Error(`runc run exited ${code}: ${stderr.trim()}`)),
    );
  });
}

/** A sandbox laid out on the host but never started, and a bundle that runs /bin/true. */
async function rawRuncFixture(ctx: BenchContext) {
  const owned = await ownNewSandbox(ctx.host, { image: ctx.image, limits: { ...DEFAULT_LIMITS } });
  const root = path.join(ctx.config.dataDir, "bench-runc");
  const bundle = path.join(owned.paths.dir, "bench-bundle");
  try {
    const laid = await layOutSandbox(ctx.host, owned);
    const config = { ...laid.config, process: { ...laid.config.process, args: ["/bin/true"] } };
    await mkdir(bundle, { mode: 0o711 });
    await writeFile(path.join(bundle, "config.json"), JSON.stringify(config));
    await mkdir(root, { recursive: true, mode: 0o700 });
  } catch (err) {
    await removeSandboxResources(ctx.host, owned.spec.id).catch(() => undefined);
    await owned.release();
    throw err;
  }
  return {
    once: (i: number) => runcRunTrue(ctx.host.config.runtime, root, bundle, `bench-true-${i}`),
    async close() {
      await removeSandboxResources(ctx.host, owned.spec.id);
      await owned.release();
      await rm(root, { recursive: true, force: true });
    },
  };
}

export const startupBench: Bench = {
  name: "startup",
  summary: "create → run `true` → destroy, against raw runc run of /bin/true on the same config",
  figures: ["runc_run_true", "create_run_destroy"],
  // More than the 30 asked for: this VM is noisy, and the median of 50 moves less.
  defaultN: 50,
  async run(ctx) {
    const raw = await rawRuncFixture(ctx);
    const phaseSamples: Record<string, number>[] = [];
    let poolHits = 0;
    try {
      // Start from a warm pool, as a running service would be.
      await ctx.host.layerPool?.fill();
      ctx.log(`startup: ${ctx.n} rounds of runc_run_true and create_run_destroy, interleaved`);
      // Before each run the pool's background work (a refill, a spent layer's deletion)
      // is let finish, so that neither case is timed while the other's leftovers run.
      const quiet = async () => {
        await ctx.host.layerPool?.idle();
      };
      const samples = await interleave(
        ctx.n,
        3,
        [
          { name: "runc_run_true", once: raw.once },
          {
            name: "create_run_destroy",
            once: async (round) => {
              const phases = new PhaseTimer();
              const claimed = ctx.host.layerPool?.stats.claimed ?? 0;
              const r = await runCode(ctx.host, {
                language: "shell",
                code: "true",
                image: ctx.image,
                limits: { ...DEFAULT_LIMITS },
                phases,
              });
              if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}: ${r.stderr.text}`);
              if (round >= 3) {
                phaseSamples.push(phases.ms);
                if ((ctx.host.layerPool?.stats.claimed ?? 0) > claimed) poolHits++;
              }
            },
          },
        ],
        quiet,
      );
      const figures: Figure[] = [
        {
          kind: "timing",
          name: "runc_run_true",
          samples: samples.get("runc_run_true")!,
          baseline: null,
        },
        {
          kind: "timing",
          name: "create_run_destroy",
          samples: samples.get("create_run_destroy")!,
          baseline: "runc_run_true",
        },
        {
          kind: "value",
          name: "create_run_destroy_pool_hits",
          n: phaseSamples.length,
          value: phaseSamples.length === 0 ? 0 : poolHits / phaseSamples.length,
          unit: "fraction",
          baseline: null,
          baselineValue: null,
          better: "higher",
        },
      ];
      // The breakdown: p50 of each phase, in the order the phases first ran.
      const names = [...new Set(phaseSamples.flatMap((p) => Object.keys(p)))];
      for (const name of names) {
        const values = phaseSamples.map((p) => p[name] ?? 0);
        figures.push({
          kind: "value",
          name: `create_run_destroy_phase.${name}`,
          n: values.length,
          value: percentile(values, 50),
          unit: "ms",
          baseline: null,
          baselineValue: null,
          better: "lower",
        });
      }
      return figures;
    } finally {
      await raw.close();
    }
  },
};
