import { CorralError } from "./errors.js";

/** Resource limits of one sandbox. Sizes in bytes, times in milliseconds. */
export interface Limits {
  memoryBytes: number;
  cpus: number;
  pids: number;
  diskBytes: number;
  inodes: number;
  openFiles: number;
  /** RLIMIT_FSIZE: the largest file a process may write; defaults to the disk limit. */
  fileSizeBytes: number;
  timeoutMs: number;
  /** Per stream (stdout, stderr): bytes kept; the rest is counted and dropped. */
  outputCapBytes: number;
  /**
   * Block I/O throttles (bytes or operations per second) on the devices that carry the
   * sandbox's I/O; 0 means unlimited, as the kernel reads a rate of 0. What they bind
   * depends on the cgroup version: see `describeIoEnforcement`.
   */
  ioReadBps: number;
  ioWriteBps: number;
  ioReadIops: number;
  ioWriteIops: number;
}

/** The limits that are rates of block I/O (0 = unlimited). */
export const IO_LIMIT_KEYS = ["ioReadBps", "ioWriteBps", "ioReadIops", "ioWriteIops"] as const;
export type IoLimitKey = (typeof IO_LIMIT_KEYS)[number];

export function hasIoLimits(limits: Pick<Limits, IoLimitKey>): boolean {
  return IO_LIMIT_KEYS.some((k) => limits[k] > 0);
}

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  memoryBytes: 512 * MiB,
  cpus: 1,
  pids: 256,
  diskBytes: 1 * GiB,
  inodes: 100_000,
  openFiles: 1024,
  fileSizeBytes: 1 * GiB,
  timeoutMs: 30_000,
  outputCapBytes: 1 * MiB,
  ioReadBps: 0,
  ioWriteBps: 0,
  ioReadIops: 0,
  ioWriteIops: 0,
});

/** Bounds that keep a typo from asking for something absurd; the kernel enforces the rest. */
const BOUNDS = {
  memoryBytes: [8 * MiB, 1024 * GiB],
  cpus: [0.01, 1024],
  pids: [8, 1_000_000],
  diskBytes: [16 * MiB, 16 * 1024 * GiB],
  inodes: [1024, 100_000_000],
  openFiles: [16, 1_048_576],
  fileSizeBytes: [1, 16 * 1024 * GiB],
  timeoutMs: [1, 24 * 3600 * 1000],
  outputCapBytes: [0, 1024 * MiB],
  // Below these a sandbox could not even start its interpreter in a useful time; 0 (no
  // limit) is allowed besides the range, see checkLimits.
  ioReadBps: [256 * 1024, 1024 * GiB],
  ioWriteBps: [256 * 1024, 1024 * GiB],
  ioReadIops: [10, 10_000_000],
  ioWriteIops: [10, 10_000_000],
} as const satisfies Record<keyof Limits, readonly [number, number]>;

const SIZE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: MiB,
  mb: MiB,
  mib: MiB,
  g: GiB,
  gb: GiB,
  gib: GiB,
  t: 1024 * GiB,
  tb: 1024 * GiB,
  tib: 1024 * GiB,
};

/** "512m", "1g", "1.5GiB", "1048576" → bytes (binary units, as Docker reads them). */
export function parseSize(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new CorralError(
      "invalid_argument",
      `invalid ${what} "${text}": expected a size such as 512m, 1g or 100000`,
    );
  }
  return Math.floor(Number(m[1]) * unit);
}

const DURATION_UNITS: Record<string, number> = {
  "": 1000,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

/** "30s", "500ms", "2m", "30" (seconds) → milliseconds. */
export function parseDuration(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!m) {
    throw new CorralError(
      "invalid_argument",
      `invalid ${what} "${text}": expected a duration such as 30s, 500ms or 2m`,
    );
  }
  return Math.round(Number(m[1]) * DURATION_UNITS[m[2] ?? ""]!);
}

export function parseCount(text: string, what: string): number {
  if (!/^\s*\d+\s*$/.test(text)) {
    throw new CorralError("invalid_argument", `invalid ${what} "${text}": expected a whole number`);
  }
  return Number(text);
}

const UNLIMITED = /^\s*(unlimited|max|none)\s*$/i;

/** An I/O bandwidth: a size per second ("10m", "10m/s", "512k"), or "unlimited" (0). */
export function parseIoRate(text: string, what: string): number {
  if (UNLIMITED.test(text)) return 0;
  const bare = text.replace(/\/s\s*$/i, "");
  if (/^\s*0+\s*$/.test(bare)) {
    throw new CorralError(
      "invalid_argument",
      `invalid ${what} "${text}": use "unlimited" for no limit (a rate of 0 would be ambiguous)`,
    );
  }
  try {
    return parseSize(bare, what);
  } catch {
    throw new CorralError(
      "invalid_argument",
      `invalid ${what} "${text}": expected a rate such as 10m (MiB/s), 512k or unlimited`,
    );
  }
}

/** An I/O operation rate: a whole number of operations per second, or "unlimited" (0). */
export function parseIops(text: string, what: string): number {
  if (UNLIMITED.test(text)) return 0;
  if (/^\s*0+\s*$/.test(text)) {
    throw new CorralError(
      "invalid_argument",
      `invalid ${what} "${text}": use "unlimited" for no limit (a rate of 0 would be ambiguous)`,
    );
  }
  if (!/^\s*\d+\s*$/.test(text)) {
    throw new CorralError(
      "invalid_argument",
      `invalid ${what} "${text}": expected a whole number of operations per second or unlimited`,
    );
  }
  return Number(text);
}

export function parseCpus(text: string): number {
  if (!/^\s*\d+(\.\d+)?\s*$/.test(text)) {
    throw new CorralError(
      "invalid_argument",
      `invalid cpus "${text}": expected a number such as 1 or 0.5`,
    );
  }
  return Number(text);
}

/** The CLI's limit flags, by the names the library takes them too. */
export const LIMIT_FLAG_KEYS = [
  "mem",
  "cpus",
  "pids",
  "disk",
  "inodes",
  "openFiles",
  "fileSize",
  "timeout",
  "outputCap",
  "ioReadBps",
  "ioWriteBps",
  "ioReadIops",
  "ioWriteIops",
] as const;

/** Text form of each limit as a user would type it (the CLI's flags). */
export type LimitFlags = Partial<Record<(typeof LIMIT_FLAG_KEYS)[number], string>>;

/** Parse flags over the defaults and check every bound: the one entry point for limits. */
export function limitsFromFlags(flags: LimitFlags, base: Limits = DEFAULT_LIMITS): Limits {
  const limits: Limits = { ...base };
  if (flags.mem !== undefined) limits.memoryBytes = parseSize(flags.mem, "memory limit");
  if (flags.cpus !== undefined) limits.cpus = parseCpus(flags.cpus);
  if (flags.pids !== undefined) limits.pids = parseCount(flags.pids, "pids limit");
  if (flags.disk !== undefined) {
    limits.diskBytes = parseSize(flags.disk, "disk limit");
    // The file-size rlimit follows the disk limit unless set on its own.
    if (flags.fileSize === undefined) limits.fileSizeBytes = limits.diskBytes;
  }
  if (flags.inodes !== undefined) limits.inodes = parseCount(flags.inodes, "inode limit");
  if (flags.openFiles !== undefined)
    limits.openFiles = parseCount(flags.openFiles, "open files limit");
  if (flags.fileSize !== undefined)
    limits.fileSizeBytes = parseSize(flags.fileSize, "file size limit");
  if (flags.timeout !== undefined) limits.timeoutMs = parseDuration(flags.timeout, "timeout");
  if (flags.outputCap !== undefined)
    limits.outputCapBytes = parseSize(flags.outputCap, "output cap");
  if (flags.ioReadBps !== undefined)
    limits.ioReadBps = parseIoRate(flags.ioReadBps, "read bandwidth (--io-read-bps)");
  if (flags.ioWriteBps !== undefined)
    limits.ioWriteBps = parseIoRate(flags.ioWriteBps, "write bandwidth (--io-write-bps)");
  if (flags.ioReadIops !== undefined)
    limits.ioReadIops = parseIops(flags.ioReadIops, "read IOPS (--io-read-iops)");
  if (flags.ioWriteIops !== undefined)
    limits.ioWriteIops = parseIops(flags.ioWriteIops, "write IOPS (--io-write-iops)");
  return checkLimits(limits);
}

/** How each limit is named in messages: the words a user typed it as. */
const LIMIT_NAMES: Record<keyof Limits, string> = {
  memoryBytes: "memory limit (--mem)",
  cpus: "cpu limit (--cpus)",
  pids: "pids limit (--pids)",
  diskBytes: "disk limit (--disk)",
  inodes: "inode limit (--inodes)",
  openFiles: "open files limit (--open-files)",
  fileSizeBytes: "file size limit (--file-size)",
  timeoutMs: "timeout (--timeout)",
  outputCapBytes: "output cap (--output-cap)",
  ioReadBps: "read bandwidth per second (--io-read-bps)",
  ioWriteBps: "write bandwidth per second (--io-write-bps)",
  ioReadIops: "read IOPS (--io-read-iops)",
  ioWriteIops: "write IOPS (--io-write-iops)",
};

/** What unit each limit's flag is typed in, so that a message can speak it back. */
const LIMIT_UNITS: Record<keyof Limits, "size" | "duration" | "number"> = {
  memoryBytes: "size",
  cpus: "number",
  pids: "number",
  diskBytes: "size",
  inodes: "number",
  openFiles: "number",
  fileSizeBytes: "size",
  timeoutMs: "duration",
  outputCapBytes: "size",
  ioReadBps: "size",
  ioWriteBps: "size",
  ioReadIops: "number",
  ioWriteIops: "number",
};

/** Bytes as the size flags take them, in the largest unit that is exact: 8m, 1t, 1536k, 100. */
export function formatSizeFlag(bytes: number): string {
  if (!Number.isInteger(bytes) || bytes <= 0) return String(bytes);
  for (const [unit, size] of [
    ["t", 1024 * GiB],
    ["g", GiB],
    ["m", MiB],
    ["k", 1024],
  ] as const) {
    if (bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return String(bytes);
}

/** Milliseconds as --timeout takes them, in the largest unit that is exact: 24h, 90s, 1ms. */
export function formatDurationFlag(ms: number): string {
  if (!Number.isInteger(ms) || ms <= 0) return `${ms}ms`;
  for (const [unit, size] of [
    ["h", 3_600_000],
    ["m", 60_000],
    ["s", 1000],
  ] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** A value of limit `key` in the units of its flag. */
export function formatLimitFlag(key: keyof Limits, value: number): string {
  const unit = LIMIT_UNITS[key];
  if (unit === "size") return formatSizeFlag(value);
  if (unit === "duration") return formatDurationFlag(value);
  return String(value);
}

/** Limits for which 0 is allowed outside the range, meaning "no limit". */
const ZERO_IS_UNLIMITED: ReadonlySet<keyof Limits> = new Set<keyof Limits>(IO_LIMIT_KEYS);

export function checkLimits(limits: Limits): Limits {
  for (const [key, [lo, hi]] of Object.entries(BOUNDS) as [
    keyof Limits,
    readonly [number, number],
  ][]) {
    const v = limits[key];
    if (v === 0 && ZERO_IS_UNLIMITED.has(key)) continue;
    // I/O rates reach the kernel as integers: a fraction would fail in runc, not here.
    const badInteger = ZERO_IS_UNLIMITED.has(key) && !Number.isInteger(v);
    if (!Number.isFinite(v) || badInteger || v < lo || v > hi) {
      const f = (n: number) => formatLimitFlag(key, n);
      const unlimited = ZERO_IS_UNLIMITED.has(key) ? ", or unlimited" : "";
      throw new CorralError(
        "invalid_argument",
        `${LIMIT_NAMES[key]} ${f(v)} is out of range: ${f(lo)} to ${f(hi)}${unlimited}`,
      );
    }
  }
  return limits;
}

/** Human-readable form, for the CLI and doctor. */
export function formatBytes(n: number): string {
  if (n >= GiB && n % GiB === 0) return `${n / GiB} GiB`;
  if (n >= MiB) return `${Math.round((n / MiB) * 10) / 10} MiB`;
  if (n >= 1024) return `${Math.round(n / 1024)} KiB`;
  return `${n} B`;
}
