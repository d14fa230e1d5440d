/**
 * `npm run bench [-- --only NAME[,NAME]] [--n N] [--list]`: runs the registered benchmarks
 * in a temporary data directory of their own (removed at the end; the image comes from
 * the shared cache), prints a readable table, then one `bench ...` line per figure.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { parseArgs } from "node:util";
import { loadConfig } from "../src/core/config.js";
import { asCorralError } from "../src/core/errors.js";
import { collectGarbage } from "../src/sandbox/gc.js";
import { openHost } from "../src/sandbox/host.js";
import { loadImageRef } from "../src/sandbox/image-ref.js";
import { cliBench } from "./benches/cli.js";
import { densityBench, liveBench, throughputBench, warmBench } from "./benches/sessions.js";
import { startupBench } from "./benches/startup.js";
import { type Figure, figureLine, formatTable } from "./lib/figures.js";
import { type Bench, selectBenches } from "./lib/registry.js";

/** Every benchmark, in the order they run. Add new ones here. */
const BENCHES: readonly Bench[] = [
  startupBench,
  cliBench,
  liveBench,
  warmBench,
  densityBench,
  throughputBench,
];

const log = (m: string) => process.stderr.write(`${m}\n`);

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      only: { type: "string", multiple: true },
      n: { type: "string" },
      list: { type: "boolean" },
    },
  });
  if (values.list) {
    for (const b of BENCHES)
      process.stdout.write(`${b.name}\t${b.figures.join(",")}\t${b.summary}\n`);
    return 0;
  }
  const only = (values.only ?? []).flatMap((o) => o.split(",")).filter(Boolean);
  const selected = selectBenches(BENCHES, only);
  if (selected.length === 0) {
    log(`bench: nothing matches --only ${only.join(",")} (see --list)`);
    return 2;
  }
  const n = values.n === undefined ? null : Number(values.n);
  if (n !== null && (!Number.isInteger(n) || n < 1)) {
    log(`bench: --n must be a whole number above 0, not ${values.n}`);
    return 2;
  }

  // A data directory of the benchmark's own, traversable by the sandbox range.
  mkdirSync("/var/tmp", { recursive: true });
  const dataDir = mkdtempSync("/var/tmp/corral-bench-");
  chmodSync(dataDir, 0o711);
  const config = loadConfig({ dataDir });
  const host = await openHost(config);
  const figures: Figure[] = [];
  try {
    const image = await loadImageRef(config, "default");
    for (const bench of selected) {
      figures.push(...(await bench.run({ n: n ?? bench.defaultN, config, host, image, log })));
    }
  } finally {
    await host.layerPool?.settle();
    await collectGarbage(host, { dryRun: false, drainPool: true });
    host.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
  process.stdout.write(`${formatTable(figures)}\n\n`);
  for (const f of figures) process.stdout.write(`${figureLine(f, figures)}\n`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    log(`bench: ${asCorralError(err).message}`);
    process.exitCode = 1;
  },
);
