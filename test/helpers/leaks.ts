/**
 * The leak check that ends every test run: no container in any runc root the tests used,
 * no mount or loop device under their directories, no cgroup named by their tags, no
 * process in the sandbox uid range, and `corral gc --dry-run --json` finds nothing.
 *
 * The layer pool: a ready pool file is not a leak (it is kept on purpose, and removed
 * with its data directory); a half-made or stale one is (gc lists it in poolFiles), and
 * so is a loop device attached to a pool file, which nothing of Corral's ever does
 * (a claim moves the file into its sandbox's directory before attaching it).
 */
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { DEFAULT_UID_BASE, dataTag, ID_RANGE_SIZE } from "../../src/core/config.js";
import { cgroupDirsWithPrefix } from "../../src/sandbox/runtime/cgroups.js";
import { loopDevicesUnder, mountsUnder } from "../../src/sandbox/runtime/mounts.js";

const ROOT = path.resolve(import.meta.dirname, "../..");

function dataDirsUnder(testRoot: string): string[] {
  try {
    return readdirSync(testRoot)
      .map((d) => path.join(testRoot, d))
      .filter((d) => statSync(d).isDirectory());
  } catch {
    return [];
  }
}

/**
 * Host processes whose uid is in the sandbox range, except those that live in the cgroup
 * of a sandbox of another Corral instance (another data directory, such as a second test
 * run on the same machine): those are that instance's to account for. A process of this
 * run's data directories, or of no Corral sandbox at all, is a leak.
 */
export function processesInSandboxRange(ownTags: readonly string[] = []): string[] {
  const found: string[] = [];
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const status = readFileSync(`/proc/${pid}/status`, "utf8");
      const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
      if (uid < DEFAULT_UID_BASE || uid >= DEFAULT_UID_BASE + ID_RANGE_SIZE) continue;
      const cgroup = readFileSync(`/proc/${pid}/cgroup`, "utf8");
      const tag = /\/corral-([0-9a-f]{10})-sb-/.exec(cgroup)?.[1];
      if (tag !== undefined && !ownTags.includes(tag)) continue;
      found.push(`process ${pid} (${/^Name:\s+(.*)$/m.exec(status)?.[1]}) uid ${uid}`);
    } catch {
      // exited meanwhile
    }
  }
  return found;
}

export async function findLeaks(testRoot: string): Promise<string[]> {
  const leaks: string[] = [];
  for (const dataDir of dataDirsUnder(testRoot)) {
    const runcRoot = path.join(dataDir, "runc");
    try {
      const out = execFileSync("runc", ["--root", runcRoot, "list", "-q"], {
        encoding: "utf8",
      }).trim();
      if (out) leaks.push(`containers in ${runcRoot}: ${out.split("\n").join(", ")}`);
    } catch {
      // no runc root: nothing started there
    }
    const tag = dataTag(dataDir);
    for (const cg of await cgroupDirsWithPrefix(`corral-${tag}-`)) leaks.push(`cgroup ${cg}`);
    try {
      const gc = execFileSync(
        process.execPath,
        [path.join(ROOT, "bin/corral.js"), "--data-dir", dataDir, "gc", "--dry-run", "--json"],
        { encoding: "utf8" },
      );
      const report = JSON.parse(gc) as Record<string, unknown[]>;
      for (const [k, v] of Object.entries(report))
        if (v.length > 0) leaks.push(`gc finds ${k}: ${v.join(", ")}`);
    } catch (err) {
      leaks.push(`gc --dry-run failed in ${dataDir}: ${(err as Error).message.split("\n")[0]}`);
    }
  }
  for (const m of await mountsUnder(testRoot)) leaks.push(`mount ${m}`);
  // Any loop device on a file under the test root is attached to nothing by now: every
  // sandbox is destroyed and pool files are never attached.
  for (const l of await loopDevicesUnder(testRoot))
    leaks.push(`loop device ${l.name} (${l.backFile})`);
  leaks.push(...processesInSandboxRange(dataDirsUnder(testRoot).map((d) => dataTag(d))));
  return leaks;
}
