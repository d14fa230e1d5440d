/**
 * buildOciSpec: the one pure function that turns a SandboxSpec into runc's config.json.
 * Every line here is a security decision; each says why. Nothing in this file does I/O.
 */
import { CorralError } from "../../core/errors.js";
import { hasIoLimits } from "../../core/limits.js";
import type { SandboxSpec } from "../../core/sandbox.js";
import { type BlockDevice, type OciBlockIo, planBlockIo } from "./block-io.js";
import { buildSeccompProfile, type OciSeccomp } from "./seccomp.js";

/** Per sandbox: queued signals, and bytes of POSIX message queues (see rlimits below). */
export const SIGPENDING_LIMIT = 1024;
export const MSGQUEUE_LIMIT_BYTES = 64 * 1024;

/** Where the supervisor binary appears inside the sandbox (read-only bind mount). */
export const SUPERVISOR_PATH_IN_SANDBOX = "/.corral/supervisor";
/** Where the kernel drivers appear inside the sandbox (read-only bind mount). */
export const KERNELS_DIR_IN_SANDBOX = "/.corral/kernels";

export interface OciMount {
  destination: string;
  type: string;
  source: string;
  options: string[];
}

export interface OciConfig {
  ociVersion: string;
  process: {
    terminal: false;
    user: { uid: number; gid: number; additionalGids: number[] };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: Record<
      "bounding" | "effective" | "inheritable" | "permitted" | "ambient",
      string[]
    >;
    rlimits: { type: string; hard: number; soft: number }[];
    noNewPrivileges: true;
  };
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: OciMount[];
  linux: {
    uidMappings?: { containerID: number; hostID: number; size: number }[];
    gidMappings?: { containerID: number; hostID: number; size: number }[];
    namespaces: { type: string }[];
    cgroupsPath: string;
    resources: {
      devices: { allow: boolean; access: string }[];
      memory: { limit: number; swap?: number; disableOOMKiller: false };
      cpu: { quota: number; period: number };
      pids: { limit: number };
      blockIO?: OciBlockIo;
    };
    seccomp?: OciSeccomp;
    maskedPaths: string[];
    readonlyPaths: string[];
    rootfsPropagation: string;
  };
}

/**
 * Paths under /proc and /sys that leak host information or allow host writes: hidden.
 * The block-device views among them (diskstats, /sys/block, the block class and the
 * virtual block devices) would name other sandboxes' layer files (a loop device's
 * backing_file) and show every disk's I/O counters, a side channel on the neighbours.
 */
export const MASKED_PATHS = [
  "/proc/acpi",
  "/proc/asound",
  "/proc/diskstats",
  "/proc/fs/ext4",
  "/proc/fs/jbd2",
  "/proc/interrupts",
  "/proc/kcore",
  "/proc/keys",
  "/proc/latency_stats",
  "/proc/sched_debug",
  "/proc/scsi",
  "/proc/timer_list",
  "/proc/partitions",
  "/proc/timer_stats",
  "/sys/block",
  "/sys/class/bdi",
  "/sys/class/block",
  "/sys/dev/block",
  "/sys/devices/virtual/bdi",
  "/sys/devices/virtual/block",
  "/sys/devices/virtual/powercap",
  "/sys/firmware",
  "/sys/fs/ext4",
] as const;

/**
 * The host's own disks' directories in sysfs (their `stat` is diskstats again), from the
 * targets of /sys/block's links as the host found them: only plain paths strictly under
 * /sys/devices, outside /sys/devices/virtual (masked whole above), are taken.
 */
export function diskMasks(sysBlockTargets: readonly string[]): string[] {
  const out = new Set<string>();
  for (const t of sysBlockTargets) {
    if (!/^\/sys\/devices\/[\w.:+@-]+(\/[\w.:+@-]+)*$/.test(t)) continue;
    if (t.startsWith("/sys/devices/virtual/") || t.split("/").includes("..")) continue;
    out.add(t);
  }
  return [...out].sort();
}

/** Paths under /proc that stay visible but must never be written. */
export const READONLY_PATHS = [
  "/proc/bus",
  "/proc/fs",
  "/proc/irq",
  "/proc/sys",
  "/proc/sysrq-trigger",
] as const;

export interface OciSpecInput {
  spec: SandboxSpec;
  rootfs: string; // the host path of the sandbox's root (the overlay mount point)
  supervisorHostPath: string; // the host path of the static supervisor binary
  kernelsHostDir: string; // the host directory of the kernel drivers
  cgroupsPath: string; // e.g. /corral-<data tag>-<id>: owned by the data directory
  /** Whether the host can limit swap (cgroup v1 needs memsw accounting). */
  swapAccounting: boolean;
  /**
   * The block devices that carry the sandbox's I/O (the image's disk, the layer's loop
   * device), found by the host. Needed only when an I/O limit is set.
   */
  blockDevices?: readonly BlockDevice[];
  /** The host disks' sysfs directories (the targets of /sys/block's links): masked too. */
  sysBlockTargets?: readonly string[];
}

export function buildOciSpec(input: OciSpecInput): OciConfig {
  const { spec } = input;
  const { limits } = spec;
  const weaken = spec.testOnly ?? {};
  const period = 100_000;
  const env = { ...spec.image.env, HOME: "/root", LANG: "C.UTF-8" };

  const mounts: OciMount[] = [
    // A /proc of the sandbox's own pid namespace; host-revealing files masked below.
    { destination: "/proc", type: "proc", source: "proc", options: ["nosuid", "noexec", "nodev"] },
    // A minimal /dev on tmpfs: runc adds only null, zero, full, random, urandom, tty.
    {
      destination: "/dev",
      type: "tmpfs",
      source: "tmpfs",
      options: ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
      destination: "/dev/pts",
      type: "devpts",
      source: "devpts",
      options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    // 64 MiB of POSIX shared memory; counted in the memory cgroup like any tmpfs.
    {
      destination: "/dev/shm",
      type: "tmpfs",
      source: "shm",
      options: ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"],
    },
    {
      destination: "/dev/mqueue",
      type: "mqueue",
      source: "mqueue",
      options: ["nosuid", "noexec", "nodev"],
    },
    // sysfs of the sandbox's own network namespace, read-only.
    {
      destination: "/sys",
      type: "sysfs",
      source: "sysfs",
      options: ["nosuid", "noexec", "nodev", "ro"],
    },
    // The supervisor: read-only, so code inside cannot replace PID 1's program.
    {
      destination: SUPERVISOR_PATH_IN_SANDBOX,
      type: "bind",
      source: input.supervisorHostPath,
      options: ["bind", "ro", "nosuid", "nodev"],
    },
    // The kernel drivers (Python, shell): read-only, so a context cannot alter another's.
    {
      destination: KERNELS_DIR_IN_SANDBOX,
      type: "bind",
      source: input.kernelsHostDir,
      options: ["bind", "ro", "nosuid", "nodev"],
    },
  ];

  const namespaces = ["pid", "network", "ipc", "uts", "mount", "cgroup"];
  // The user namespace is mandatory: root inside maps to an unprivileged host range, so a
  // breakout through the runtime (runc 1.1.5 predates the 2025 /proc fixes) lands as nobody.
  if (!weaken.dropUserNamespace) namespaces.push("user");

  const config: OciConfig = {
    ociVersion: "1.0.2",
    process: {
      terminal: false,
      user: { uid: 0, gid: 0, additionalGids: [0] },
      args: [SUPERVISOR_PATH_IN_SANDBOX],
      env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      cwd: "/",
      // No capabilities at all, in any set: root inside can do no more than an ordinary user.
      capabilities: { bounding: [], effective: [], inheritable: [], permitted: [], ambient: [] },
      rlimits: [
        { type: "RLIMIT_NOFILE", hard: limits.openFiles, soft: limits.openFiles },
        { type: "RLIMIT_FSIZE", hard: limits.fileSizeBytes, soft: limits.fileSizeBytes },
        // No core dumps: they would fill the writable layer and may hold secrets.
        { type: "RLIMIT_CORE", hard: 0, soft: 0 },
        // Queued signals and POSIX message queue bytes are also counted against the user
        // namespace's owner on the host (root): without a bound of its own, one sandbox
        // could use up root's allowance (96k signals) and starve the host and neighbours.
        { type: "RLIMIT_SIGPENDING", hard: SIGPENDING_LIMIT, soft: SIGPENDING_LIMIT },
        { type: "RLIMIT_MSGQUEUE", hard: MSGQUEUE_LIMIT_BYTES, soft: MSGQUEUE_LIMIT_BYTES },
      ],
      // setuid binaries and file capabilities in the image grant nothing.
      noNewPrivileges: true,
    },
    root: { path: input.rootfs, readonly: false },
    hostname: spec.hostname,
    mounts,
    linux: {
      namespaces: namespaces.map((type) => ({ type })),
      cgroupsPath: input.cgroupsPath,
      resources: {
        // Deny every device node except runc's default minimal set.
        devices: [{ allow: false, access: "rwm" }],
        // memory+swap equal to memory: no swap, so a balloon is OOM-killed, not swapped out.
        memory: {
          limit: limits.memoryBytes,
          ...(input.swapAccounting ? { swap: limits.memoryBytes } : {}),
          disableOOMKiller: false,
        },
        cpu: { quota: Math.max(1000, Math.round(limits.cpus * period)), period },
        pids: { limit: limits.pids },
      },
      maskedPaths: [...MASKED_PATHS, ...diskMasks(input.sysBlockTargets ?? [])],
      readonlyPaths: [...READONLY_PATHS],
      // Mount events never propagate from the sandbox back to the host.
      rootfsPropagation: "private",
    },
  };
  if (!weaken.dropUserNamespace) {
    const map = [{ containerID: 0, hostID: spec.ids.base, size: spec.ids.size }];
    config.linux.uidMappings = map;
    config.linux.gidMappings = map.map((m) => ({ ...m }));
  }
  if (!weaken.dropSeccomp) config.linux.seccomp = buildSeccompProfile();
  // I/O throttles apply per device; an I/O limit with no device to apply it to would be
  // silently void, so it is refused instead.
  if (hasIoLimits(limits)) {
    const blockIO = planBlockIo(limits, input.blockDevices ?? []);
    if (!blockIO || (input.blockDevices ?? []).length === 0) {
      throw new CorralError(
        "prerequisite_missing",
        "an I/O limit was requested but no block device carrying the sandbox's I/O was found",
        "run corral doctor (I/O limits)",
      );
    }
    config.linux.resources.blockIO = blockIO;
  }
  return config;
}
