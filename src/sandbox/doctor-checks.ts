/**
 * What `corral doctor` concludes about a host, as one pure function: facts in (gathered
 * by src/cli/doctor.ts), lines out. Each line is ok (enforced as documented), degraded
 * (works, with a stated weakness) or missing (Corral refuses, or the feature is off), and
 * every line that is not ok says how to fix it.
 */
import { formatBytes, type Limits } from "../core/limits.js";
import { chooseLayerKind } from "../core/sandbox.js";
import { type DeviceProbe, describeIoEnforcement } from "./runtime/block-io.js";
import { assessRuncCves, parseRuncVersion } from "./runtime/runc-cves.js";

export type DoctorStatus = "ok" | "degraded" | "missing";

export interface DoctorLine {
  status: DoctorStatus;
  name: string;
  detail: string;
  fix?: string;
}

export interface HostFacts {
  uid: number;
  kernel: { release: string; arch: string };
  runtime: { name: string; path: string | null; versionText: string | null };
  cgroup: {
    version: 1 | 2;
    /** Enabled controllers (v1: /proc/cgroups; v2: cgroup.subtree_control of the root). */
    controllers: string[];
    swapAccounting: boolean;
    /** v1: blkio.throttle.* files exist; v2: the io controller is enabled. */
    ioThrottle: boolean;
  };
  /** /proc/sys/user/max_user_namespaces (0 when unreadable). */
  maxUserNamespaces: number;
  /** The kernel reports a Seccomp field for processes (CONFIG_SECCOMP). */
  seccomp: boolean;
  seccompFilter: boolean;
  /** Refused syscalls named in the profile (for the line's detail). */
  refusedSyscalls: number;
  loop: { losetup: boolean; loopControl: boolean };
  mkfsExt4: boolean;
  debootstrap: boolean;
  hardLimits: { nofile: number; fsize: number };
  defaults: Limits;
  image: { ok: true; digest: string; dir: string } | { ok: false; message: string; hint: string };
  imageDevice: DeviceProbe;
  dataDevice: DeviceProbe;
  pool: {
    perShape: number;
    shapes: { diskBytes: number; inodes: number }[];
    ready: number;
    dir: string;
  };
  /** Warm pools of live processes on this data directory (their state files). */
  warmPools: {
    key: string;
    pid: number;
    alive: boolean;
    size: number;
    ready: number;
    handedOut: number;
    misses: number;
    failures: number;
    lastError: string | null;
  }[];
}

const REQUIRED_CONTROLLERS: Record<1 | 2, string[]> = {
  1: ["memory", "cpu", "cpuacct", "pids"],
  2: ["memory", "cpu", "pids"],
};

/**
 * How sandboxes' roots were mounted in the probe: `fallback` is the host's reason for
 * using mount(8) instead of the supervisor's layer modes, or null when they served it;
 * `resident`, whether through its resident layer-serve (else a process per plan).
 */
export function describeLayerMounts(fallback: string | null, resident: boolean): DoctorLine {
  return fallback === null
    ? {
        status: "ok",
        name: "layer mounts",
        detail: resident
          ? "direct system calls, by a resident corral-supervisor layer-serve (a child of its own per plan)"
          : "direct system calls, one corral-supervisor process each way (layer-up, layer-down)",
      }
    : {
        status: "degraded",
        name: "layer mounts",
        detail: `mount(8) and umount(8), a process per mount (slower): ${fallback}`,
        fix: "a kernel with openat2 and /dev/loop-control (Linux 5.6+, modprobe loop), and data and image directories not reached through a symbolic link",
      };
}

export function decideHostLines(f: HostFacts): DoctorLine[] {
  const lines: DoctorLine[] = [];
  const add = (status: DoctorStatus, name: string, detail: string, fix?: string) =>
    lines.push({ status, name, detail, ...(fix && status !== "ok" ? { fix } : {}) });
  const userns = f.maxUserNamespaces > 0;

  add(f.uid === 0 ? "ok" : "missing", "root", `uid ${f.uid}`, "run as root (sudo)");

  // The seccomp profile lists SCMP_ARCH_X86_64 only: elsewhere it would refuse everything.
  const kernelMajor = Number(/^(\d+)/.exec(f.kernel.release)?.[1] ?? 0);
  const x64 = f.kernel.arch === "x64";
  add(
    !x64 ? "missing" : kernelMajor >= 5 ? "ok" : "degraded",
    "kernel",
    `${f.kernel.release} ${f.kernel.arch}${x64 && kernelMajor < 5 ? " (older than 5.0: untested)" : ""}`,
    x64 ? "a 5.x or newer kernel" : "an x86_64 host (the seccomp profile is x86_64 only)",
  );

  // The runtime and what it is exposed to.
  const version = f.runtime.versionText ? parseRuncVersion(f.runtime.versionText) : null;
  if (!f.runtime.path) {
    add("missing", "runtime", `${f.runtime.name} not found`, "apt-get install runc");
  } else if (!version) {
    add(
      "degraded",
      "runtime",
      `${f.runtime.name} at ${f.runtime.path}: version not recognised, known CVEs not checked`,
      "install runc 1.2.8, 1.3.3 or newer",
    );
  } else {
    const debian = version.debian ? ` (Debian ${version.debian.package})` : "";
    add("ok", "runtime", `${f.runtime.name} ${version.upstream}${debian} at ${f.runtime.path}`);
    for (const a of assessRuncCves(version, userns)) {
      add(
        a.status === "fixed" || a.status === "backported"
          ? "ok"
          : a.status === "mitigated"
            ? "degraded"
            : "missing",
        `runc ${a.cve.id}`,
        a.detail,
        `upgrade runc (fixed in ${a.cve.fixedIn.join(", ")})`,
      );
    }
  }

  const required = REQUIRED_CONTROLLERS[f.cgroup.version];
  const absent = required.filter((c) => !f.cgroup.controllers.includes(c));
  add(
    absent.length === 0 ? "ok" : "missing",
    "cgroups",
    `v${f.cgroup.version}${f.cgroup.version === 1 ? " (hybrid or legacy; tested)" : " (unified; mapped, untested here)"}: ${f.cgroup.controllers.join(" ")}${absent.length > 0 ? `; missing ${absent.join(", ")}` : ""}`,
    `enable the ${absent.join(", ")} cgroup controller(s)`,
  );
  add(
    f.cgroup.swapAccounting ? "ok" : "degraded",
    "memory.swap",
    f.cgroup.swapAccounting
      ? "memory+swap limited to the memory limit (no swap)"
      : "swap accounting off: a sandbox could swap past its memory limit",
    "boot with swapaccount=1",
  );
  add(
    userns ? "ok" : "missing",
    "user namespaces",
    userns
      ? `mandatory for every sandbox (max_user_namespaces ${f.maxUserNamespaces})`
      : "disabled: Corral refuses to run without them",
    "sysctl -w user.max_user_namespaces=15000",
  );
  add(
    f.seccomp && f.seccompFilter ? "ok" : "missing",
    "seccomp",
    f.seccomp && f.seccompFilter
      ? `allowlist, default EPERM, x86_64 only; ${f.refusedSyscalls} syscalls refused by name`
      : "the kernel lacks seccomp filters (CONFIG_SECCOMP_FILTER)",
    "a kernel with CONFIG_SECCOMP_FILTER",
  );
  const loopOk = f.loop.losetup && f.loop.loopControl;
  add(
    loopOk ? "ok" : "missing",
    "loop devices",
    loopOk
      ? "losetup and /dev/loop-control present"
      : `${f.loop.losetup ? "" : "losetup missing; "}${f.loop.loopControl ? "" : "/dev/loop-control missing"}`.replace(
          /; $/,
          "",
        ),
    f.loop.losetup ? "modprobe loop" : "apt-get install mount",
  );

  // The disk limit: tmpfs (counted as memory) for small disks, loop-backed ext4 otherwise.
  const kind = chooseLayerKind(f.defaults);
  const diskOk = f.mkfsExt4 && loopOk;
  add(
    diskOk ? "ok" : "missing",
    "disk limit",
    `${kind === "ext4-loop" ? "loop-backed ext4" : "tmpfs"} for the default ${formatBytes(f.defaults.diskBytes)} disk (size and ${f.defaults.inodes} inodes capped); tmpfs when the disk is at most half the memory limit, since tmpfs counts as memory${f.mkfsExt4 ? "" : "; mkfs.ext4 missing: disks above half the memory limit fail"}`,
    f.mkfsExt4 ? "see loop devices" : "apt-get install e2fsprogs",
  );

  const io = describeIoEnforcement({
    cgroupVersion: f.cgroup.version,
    controllerAvailable: f.cgroup.ioThrottle,
    memoryControllerAvailable: f.cgroup.controllers.includes("memory"),
    image: f.imageDevice,
    data: f.dataDevice,
  });
  add(io.status, "I/O limits", io.detail, io.fix);

  if (f.image.ok) {
    add("ok", "image cache", `default ${f.image.digest.slice(0, 19)} in ${f.image.dir}`);
  } else {
    add("missing", "image cache", f.image.message, f.image.hint);
  }

  if (f.pool.perShape === 0) {
    add(
      "degraded",
      "layer pool",
      "off: every create formats its own disk layer",
      "set --layer-pool 2 (or CORRAL_LAYER_POOL=2)",
    );
  } else {
    const shapes = f.pool.shapes
      .map((s) => `${formatBytes(s.diskBytes)}/${s.inodes} inodes`)
      .join(", ");
    add(
      diskOk ? "ok" : "missing",
      "layer pool",
      `${f.pool.ready} of ${f.pool.perShape * f.pool.shapes.length} ready (${shapes}) in ${f.pool.dir}; refilled in the background, each entry used once`,
      "see disk limit",
    );
  }

  // The warm pool lives in the process that serves sessions (the library, later the
  // server): doctor reads the state files those processes keep.
  const livePools = f.warmPools.filter((p) => p.alive);
  if (livePools.length === 0) {
    add(
      "ok",
      "warm pool",
      "none running on this data directory: sessions start cold (a kernel starts on first use)",
    );
  }
  for (const p of livePools) {
    const failing = p.failures > 0 && p.ready === 0;
    add(
      failing ? "degraded" : "ok",
      `warm pool ${p.key}`,
      `${p.ready} of ${p.size} ready (pid ${p.pid}); ${p.handedOut} handed out, ${p.misses} misses${p.failures > 0 ? `, ${p.failures} failed creations (last: ${p.lastError ?? "?"})` : ""}`,
      "see the lines above for what keeps sandboxes from starting",
    );
  }

  add(
    f.hardLimits.nofile >= f.defaults.openFiles ? "ok" : "degraded",
    "rlimits",
    `host hard limits: open files ${f.hardLimits.nofile}, file size ${f.hardLimits.fsize === Number.POSITIVE_INFINITY ? "unlimited" : f.hardLimits.fsize}`,
    `raise the hard open-files limit to ${f.defaults.openFiles} or more, or run with --open-files below it`,
  );
  // debootstrap builds images; running the ones already built does not need it.
  add(
    f.debootstrap ? "ok" : f.image.ok ? "degraded" : "missing",
    "debootstrap",
    f.debootstrap ? "present (builds images)" : "missing: no new image can be built",
    "apt-get install debootstrap",
  );
  add("ok", "network", "none: each sandbox has its own loopback only, no egress");
  return lines;
}
