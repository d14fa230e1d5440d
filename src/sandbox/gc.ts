/**
 * Garbage collection: remove what crashed owners left behind, and only that. A sandbox
 * belongs to this data directory if it lives in its sandboxes dir, its runc root, or
 * carries its tag in a cgroup name; it is garbage only if no live process holds its
 * owner lock. gc takes that lock itself while removing, so two gc runs never collide and
 * a sandbox being created (lock taken before anything else) is never touched.
 */
import { readdir } from "node:fs/promises";
import path from "node:path";
import { acquireLock } from "../core/lock.js";
import { type Host, layerPoolLockName } from "./host.js";
import { cgroupDirsWithPrefix } from "./runtime/cgroups.js";
import { LayerPool } from "./runtime/layer-pool.js";
import { detachLoop, loopDevicesUnder, mountsUnder } from "./runtime/mounts.js";
import { cgroupNameFor, ownerLockName, removeSandboxResources } from "./sandbox.js";

export interface GcReport {
  sandboxes: string[];
  containers: string[];
  mounts: string[];
  loopDevices: string[];
  cgroups: string[];
  directories: string[];
  /** Layer-pool files removed: stale entries, dead fillers' partial files, all with --pool. */
  poolFiles: string[];
  errors: string[];
}

export function emptyGcReport(): GcReport {
  return {
    sandboxes: [],
    containers: [],
    mounts: [],
    loopDevices: [],
    cgroups: [],
    directories: [],
    poolFiles: [],
    errors: [],
  };
}

const ID_PATTERN = /^sb-[0-9a-f]{12}$/;

/** Every sandbox id this data directory has any trace of, with what each trace is. */
export async function findSandboxTraces(host: Host): Promise<Map<string, GcReport>> {
  const traces = new Map<string, GcReport>();
  const of = (id: string) => {
    let r = traces.get(id);
    if (!r) {
      r = emptyGcReport();
      traces.set(id, r);
    }
    return r;
  };
  let dirs: string[] = [];
  try {
    dirs = await readdir(host.sandboxesDir);
  } catch {
    // no sandboxes dir yet
  }
  for (const d of dirs)
    if (ID_PATTERN.test(d)) of(d).directories.push(path.join(host.sandboxesDir, d));
  for (const c of await host.runtime.list())
    if (ID_PATTERN.test(c.id)) of(c.id).containers.push(c.id);
  const cgPrefix = cgroupNameFor(host.tag, "");
  for (const dir of await cgroupDirsWithPrefix(cgPrefix)) {
    const id = path.basename(dir).slice(cgPrefix.length);
    if (ID_PATTERN.test(id)) of(id).cgroups.push(dir);
  }
  for (const m of await mountsUnder(host.sandboxesDir)) {
    const id = path.relative(host.sandboxesDir, m).split(path.sep)[0] ?? "";
    if (ID_PATTERN.test(id)) of(id).mounts.push(m);
  }
  for (const l of await loopDevicesUnder(host.sandboxesDir)) {
    const id = path.relative(host.sandboxesDir, l.backFile).split(path.sep)[0] ?? "";
    if (ID_PATTERN.test(id)) of(id).loopDevices.push(l.name);
  }
  return traces;
}

/**
 * The data directory's layer pool for gc: the host's own, or, when the pool is off, one
 * that pools no shape, so that every entry left from when it was on counts as stale.
 */
function poolOf(host: Host): LayerPool {
  return (
    host.layerPool ??
    new LayerPool(path.join(host.config.dataDir, "pool"), [], 0, layerPoolLockName(host.tag))
  );
}

export async function collectGarbage(
  host: Host,
  options: { dryRun: boolean; drainPool?: boolean },
): Promise<GcReport & { poolReady: number }> {
  const report = emptyGcReport();
  const pool = poolOf(host);
  // A pool entry is never attached while it is in the pool (a claim moves it into its
  // sandbox's directory first): a loop device on one is attached to nothing of ours.
  for (const l of await loopDevicesUnder(pool.dir)) {
    report.loopDevices.push(l.name);
    if (!options.dryRun) await detachLoop(l.name);
  }
  const collected = await pool.collect({
    dryRun: options.dryRun,
    drain: options.drainPool === true,
  });
  report.poolFiles.push(...collected.removed);
  for (const [id, trace] of await findSandboxTraces(host)) {
    // Holding the owner lock proves the owner is dead and keeps other gc runs away.
    const release = await acquireLock(ownerLockName(host.tag, id));
    if (!release) continue; // a live owner: not garbage
    try {
      report.sandboxes.push(id);
      for (const key of [
        "containers",
        "mounts",
        "loopDevices",
        "cgroups",
        "directories",
      ] as const) {
        report[key].push(...trace[key]);
      }
      if (!options.dryRun) {
        try {
          await removeSandboxResources(host, id);
          host.events.emit({
            principal: host.config.principal,
            sandbox: id,
            kind: "gc.remove",
            details: { ...trace, errors: undefined },
            outcome: "ok",
          });
        } catch (err) {
          report.errors.push(`${id}: ${(err as Error).message}`);
        }
      }
    } finally {
      await release();
    }
  }
  return { ...report, poolReady: collected.ready };
}
