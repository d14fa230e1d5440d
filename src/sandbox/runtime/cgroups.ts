/**
 * Reading a sandbox's cgroup: its limits (for the self-check) and its usage (for results).
 * runc creates and removes the cgroup; Corral only reads it, and gc removes leftovers.
 * cgroup v1 (tested here) and v2 (unified; mapped from the kernel docs) are both handled.
 */
import { existsSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { IO_LIMIT_KEYS } from "../../core/limits.js";
import {
  emptyIoThrottleSeen,
  type IoThrottleSeen,
  parseIoMax,
  parseV1Throttle,
  planThrottleLift,
  THROTTLES,
} from "./block-io.js";

export const CGROUP_ROOT = "/sys/fs/cgroup";

export type CgroupVersion = 1 | 2;

export function cgroupVersion(root = CGROUP_ROOT): CgroupVersion {
  // A unified hierarchy has cgroup.controllers at its root; v1 and hybrid do not.
  return existsSync(path.join(root, "cgroup.controllers")) ? 2 : 1;
}

/** Whether the memory controller can limit memory+swap (v1 needs memsw accounting). */
export function swapAccounting(version: CgroupVersion, root = CGROUP_ROOT): boolean {
  if (version === 2) return true;
  return existsSync(path.join(root, "memory", "memory.memsw.limit_in_bytes"));
}

export interface CgroupUsage {
  cpuUs: number | null;
  peakMemoryBytes: number | null;
  oomKills: number | null;
}

export interface CgroupLimitsSeen {
  memoryBytes: number | null;
  cpuQuotaUs: number | null;
  cpuPeriodUs: number | null;
  pids: number | null;
  /** Block I/O throttles in force; read only when the sandbox has I/O limits. */
  io?: IoThrottleSeen;
}

function readTextSync(file: string): string | null {
  try {
    return readFileSync(file, "utf8").trim();
  } catch {
    return null;
  }
}

function numberOf(t: string | null): number | null {
  if (t === null) return null;
  if (t === "max") return Number.POSITIVE_INFINITY;
  const n = Number(t);
  return Number.isFinite(n) ? n : null;
}

/** "key value" lines (memory.events, cpu.stat, memory.oom_control) → one key's value. */
export function flatKey(text: string | null, key: string): number | null {
  if (text === null) return null;
  for (const line of text.split("\n")) {
    const [k, v] = line.trim().split(/\s+/);
    if (k === key && v !== undefined) return Number(v);
  }
  return null;
}

export class CgroupReader {
  constructor(
    readonly cgroupsPath: string,
    readonly version: CgroupVersion = cgroupVersion(),
    readonly root = CGROUP_ROOT,
  ) {}

  private file(controller: string, name: string): string {
    return this.version === 2
      ? path.join(this.root, this.cgroupsPath, name)
      : path.join(this.root, controller, this.cgroupsPath, name);
  }

  /**
   * Resource use so far. Read synchronously: these are kernel pseudo-files that answer at
   * once, and a live call reads them twice, so the thread-pool round trips of async reads
   * (about 0.7 ms per usage here) would be most of a millisecond exec.
   */
  usageNow(): CgroupUsage {
    if (this.version === 2) {
      return {
        cpuUs: flatKey(readTextSync(this.file("", "cpu.stat")), "usage_usec"),
        peakMemoryBytes: numberOf(readTextSync(this.file("", "memory.peak"))),
        oomKills: flatKey(readTextSync(this.file("", "memory.events")), "oom_kill"),
      };
    }
    const ns = numberOf(readTextSync(this.file("cpuacct", "cpuacct.usage")));
    return {
      cpuUs: ns === null ? null : Math.round(ns / 1000),
      peakMemoryBytes: numberOf(readTextSync(this.file("memory", "memory.max_usage_in_bytes"))),
      oomKills: flatKey(readTextSync(this.file("memory", "memory.oom_control")), "oom_kill"),
    };
  }

  async usage(): Promise<CgroupUsage> {
    return this.usageNow();
  }

  /**
   * Start a new peak-memory window, so that a call's peak is its own and not the
   * sandbox's lifetime high. cgroup v1 resets `memory.max_usage_in_bytes` on a write of 0;
   * v2's `memory.peak` resets only per open file (Linux 6.12+), so there the peak stays
   * the sandbox's since creation. Returns whether the window was reset.
   */
  resetPeak(): boolean {
    if (this.version === 2) return false;
    try {
      writeFileSync(this.file("memory", "memory.max_usage_in_bytes"), "0");
      return true;
    } catch {
      return false;
    }
  }

  /** The limits in force (read synchronously, like usageNow: kernel pseudo-files). */
  limitsNow(options: { io?: boolean } = {}): CgroupLimitsSeen {
    const io = options.io ? this.ioThrottlesNow() : undefined;
    if (this.version === 2) {
      const [quota, period] = (readTextSync(this.file("", "cpu.max")) ?? "").split(" ");
      return {
        memoryBytes: numberOf(readTextSync(this.file("", "memory.max"))),
        cpuQuotaUs:
          quota === undefined || quota === "" ? null : quota === "max" ? -1 : Number(quota),
        cpuPeriodUs: period === undefined ? null : Number(period),
        pids: numberOf(readTextSync(this.file("", "pids.max"))),
        ...(io ? { io } : {}),
      };
    }
    return {
      memoryBytes: numberOf(readTextSync(this.file("memory", "memory.limit_in_bytes"))),
      cpuQuotaUs: numberOf(readTextSync(this.file("cpu", "cpu.cfs_quota_us"))),
      cpuPeriodUs: numberOf(readTextSync(this.file("cpu", "cpu.cfs_period_us"))),
      pids: numberOf(readTextSync(this.file("pids", "pids.max"))),
      ...(io ? { io } : {}),
    };
  }

  async limits(options: { io?: boolean } = {}): Promise<CgroupLimitsSeen> {
    return this.limitsNow(options);
  }

  /** The block I/O throttles of the cgroup (v1: blkio.throttle.*; v2: io.max). */
  ioThrottlesNow(): IoThrottleSeen {
    if (this.version === 2) return parseIoMax(readTextSync(this.file("", "io.max")));
    const seen = emptyIoThrottleSeen();
    for (const key of IO_LIMIT_KEYS) {
      const { v1File, v2 } = THROTTLES[key];
      seen[v2] = parseV1Throttle(readTextSync(this.file("blkio", v1File)));
    }
    return seen;
  }

  async ioThrottles(): Promise<IoThrottleSeen> {
    return this.ioThrottlesNow();
  }

  /** Lift every I/O throttle of the cgroup (see planThrottleLift); never throws. */
  liftIoThrottles(): void {
    for (const w of planThrottleLift(this.version, this.ioThrottlesNow())) {
      const file =
        w.key === "io.max" ? this.file("", "io.max") : this.file("blkio", THROTTLES[w.key].v1File);
      try {
        writeFileSync(file, w.line);
      } catch {
        // gone already, or not ours to change: the kill goes on regardless
      }
    }
  }
}

/**
 * Every cgroup directory directly under a hierarchy whose name starts with `prefix`
 * (v1: one per controller mount; v2: the unified root). Used by gc and the leak check.
 */
export async function cgroupDirsWithPrefix(prefix: string, root = CGROUP_ROOT): Promise<string[]> {
  const out: string[] = [];
  const scan = async (dir: string) => {
    let entries: string[] = [];
    try {
      entries = await readdir(dir);
    } catch {
      return;
    }
    for (const e of entries) if (e.startsWith(prefix)) out.push(path.join(dir, e));
  };
  if (cgroupVersion(root) === 2) {
    await scan(root);
  } else {
    let hierarchies: string[] = [];
    try {
      hierarchies = await readdir(root);
    } catch {
      return out;
    }
    for (const h of hierarchies) await scan(path.join(root, h));
  }
  return out;
}

/**
 * The cgroup directories named exactly `name` directly under each hierarchy: what
 * cgroupDirsWithPrefix finds for one sandbox's full name, without listing every cgroup of
 * the host (one readdir of the root, then a stat per hierarchy).
 */
export async function cgroupDirsNamed(name: string, root = CGROUP_ROOT): Promise<string[]> {
  if (name === "" || name.includes("/")) throw new Error(`not a cgroup name: ${name}`);
  if (cgroupVersion(root) === 2) {
    const dir = path.join(root, name);
    return existsSync(dir) ? [dir] : [];
  }
  let hierarchies: string[] = [];
  try {
    // cgroupfs answers at once: read in place, not through the thread pool.
    hierarchies = readdirSync(root);
  } catch {
    return [];
  }
  return hierarchies.map((h) => path.join(root, h, name)).filter((dir) => existsSync(dir));
}

/**
 * Remove an empty cgroup directory (the kernel refuses while a process is inside).
 * Synchronous: an rmdir in cgroupfs takes some 20 µs, less than a thread-pool round trip.
 */
export async function removeCgroupDir(dir: string): Promise<boolean> {
  try {
    rmdirSync(dir);
    return true;
  } catch {
    return false;
  }
}
