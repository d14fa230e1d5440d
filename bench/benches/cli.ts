/**
 * The CLI end to end: `node bin/corral.js run --lang shell -c true`, as a user types it.
 * Node's own start (about 100 ms here) dominates it; it has no same-run baseline.
 */
import { execFile } from "node:child_process";
import path from "node:path";
import { packageRoot } from "../../src/core/package-root.js";
import { type Bench, interleave } from "../lib/registry.js";

export const cliBench: Bench = {
  name: "cli",
  summary: "corral run --lang shell -c true, a new Node process each time",
  figures: ["cli_end_to_end"],
  defaultN: 30,
  async run(ctx) {
    const cli = path.join(packageRoot(), "bin/corral.js");
    const once = () =>
      new Promise<void>((resolve, reject) => {
        execFile(
          process.execPath,
          [cli, "--data-dir", ctx.config.dataDir, "run", "--lang", "shell", "-c", "true"],
          (err, _stdout, stderr) =>
            err ? reject(new Error(`corral run: ${stderr.trim()}`)) : resolve(),
        );
      });
    ctx.log(`cli: ${ctx.n} runs of corral run --lang shell -c true`);
    const samples = await interleave(ctx.n, 2, [{ name: "cli_end_to_end", once }]);
    return [
      {
        kind: "timing",
        name: "cli_end_to_end",
        samples: samples.get("cli_end_to_end")!,
        baseline: null,
      },
    ];
  },
};
