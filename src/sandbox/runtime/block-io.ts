/**
 * Block I/O throttling, as data: which throttle entries a sandbox gets (for config.json),
 * how the kernel shows them back (for the self-check), and what they enforce on each
 * cgroup version (for doctor and the README). Nothing in this file does I/O; the host
 * finds the devices (block-devices.ts) and passes them in.
 */
import { IO_LIMIT_KEYS, type IoLimitKey, type Limits } from "../../core/limits.js";

/** A block device by number, as the kernel's cgroup files name it (`major:minor`). */
export interface BlockDevice {
  major: number;
  minor: number;
}

/** Why a device carries the sandbox's I/O (for messages and doctor). */
export interface CarrierDevice extends BlockDevice {
  carries: IoCarrier;
}

/**
 * The places a sandbox's I/O can reach a disk: the image (the overlay's lower layer), the
 * data directory (the supervisor and kernel drivers are bind-mounted from it, and it
 * backs the loop file of the layer) and the layer's own loop device.
 */
export type IoCarrier = "image" | "data" | "layer";

/** What lies under a path, as far as throttling goes. */
export type DeviceProbe =
  | { kind: "block"; device: BlockDevice }
  /** tmpfs or ramfs: memory, no block I/O, nothing to throttle. */
  | { kind: "memory" }
  /** I/O reaches some device that cannot be throttled (overlayfs, NFS, btrfs, ...). */
  | { kind: "unthrottleable"; reason: string };

const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

/**
 * The first step of probing a path, from its stat and statfs: major 0 is an anonymous
 * device (no request queue of its own), which is harmless for tmpfs and ramfs (no block
 * I/O at all) and unthrottleable for anything else. A real device number is a block
 * device; the host then maps a partition to its disk (see block-devices.ts).
 */
export function classifyDevice(path: string, dev: BlockDevice, fsMagic: number): DeviceProbe {
  if (dev.major !== 0) return { kind: "block", device: dev };
  if (fsMagic === TMPFS_MAGIC || fsMagic === RAMFS_MAGIC) return { kind: "memory" };
  return {
    kind: "unthrottleable",
    reason: `${path} is on an anonymous device ${deviceName(dev)} (file system 0x${fsMagic.toString(16)}), whose I/O cannot be throttled`,
  };
}

/**
 * The devices to throttle, from the probes of every carrier, or why I/O limits cannot be
 * enforced: a carrier whose I/O reaches a disk that cannot be throttled refuses the
 * limits (fail closed), a carrier in memory needs nothing.
 */
export function decideIoCarriers(
  probes: Partial<Record<IoCarrier, DeviceProbe>>,
): { ok: true; devices: CarrierDevice[] } | { ok: false; reason: string } {
  const devices: CarrierDevice[] = [];
  for (const carries of ["image", "data", "layer"] as const) {
    const probe = probes[carries];
    if (probe === undefined || probe.kind === "memory") continue;
    if (probe.kind === "unthrottleable")
      return { ok: false, reason: `${carries}: ${probe.reason}` };
    devices.push({ ...probe.device, carries });
  }
  return { ok: true, devices: uniqueDevices(devices) };
}

export interface OciThrottle {
  major: number;
  minor: number;
  rate: number;
}

/** linux.resources.blockIO of the OCI runtime spec (the throttle part only). */
export interface OciBlockIo {
  throttleReadBpsDevice?: OciThrottle[];
  throttleWriteBpsDevice?: OciThrottle[];
  throttleReadIOPSDevice?: OciThrottle[];
  throttleWriteIOPSDevice?: OciThrottle[];
}

/** The throttle kinds, with their names in the OCI spec and in cgroup v2's io.max. */
export const THROTTLES: Record<
  IoLimitKey,
  { oci: keyof OciBlockIo; v2: IoMaxKey; v1File: string }
> = {
  ioReadBps: { oci: "throttleReadBpsDevice", v2: "rbps", v1File: "blkio.throttle.read_bps_device" },
  ioWriteBps: {
    oci: "throttleWriteBpsDevice",
    v2: "wbps",
    v1File: "blkio.throttle.write_bps_device",
  },
  ioReadIops: {
    oci: "throttleReadIOPSDevice",
    v2: "riops",
    v1File: "blkio.throttle.read_iops_device",
  },
  ioWriteIops: {
    oci: "throttleWriteIOPSDevice",
    v2: "wiops",
    v1File: "blkio.throttle.write_iops_device",
  },
};

export type IoMaxKey = "rbps" | "wbps" | "riops" | "wiops";

export function deviceName(d: BlockDevice): string {
  return `${d.major}:${d.minor}`;
}

/**
 * Split a Linux dev_t (as stat returns it) into major and minor, with glibc's encoding:
 * the minor is bits 0..7 and 20..43, the major bits 8..19 and 44..63.
 */
export function splitDevNumber(dev: bigint): BlockDevice {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & 0xfffff000n);
  const minor = (dev & 0xffn) | ((dev >> 12n) & 0xffffff00n);
  return { major: Number(major), minor: Number(minor) };
}

/** Devices once each, in the order given (the image and the layer may share one). */
export function uniqueDevices<T extends BlockDevice>(devices: readonly T[]): T[] {
  const seen = new Set<string>();
  return devices.filter((d) => {
    const key = deviceName(d);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/**
 * The blockIO section for the sandbox's limits on the devices that carry its I/O, or
 * undefined when no I/O limit is set. Every limited kind gets one entry per device, so
 * that no path to the disk is left unthrottled.
 */
export function planBlockIo(
  limits: Pick<Limits, IoLimitKey>,
  devices: readonly BlockDevice[],
): OciBlockIo | undefined {
  const plan: OciBlockIo = {};
  for (const key of IO_LIMIT_KEYS) {
    const rate = limits[key];
    if (rate <= 0) continue;
    plan[THROTTLES[key].oci] = uniqueDevices(devices).map((d) => ({
      major: d.major,
      minor: d.minor,
      rate,
    }));
  }
  return Object.keys(plan).length > 0 ? plan : undefined;
}

/** What the host reads back from the sandbox's cgroup: per kind, device name → rate. */
export type IoThrottleSeen = Record<IoMaxKey, Record<string, number>>;

export function emptyIoThrottleSeen(): IoThrottleSeen {
  return { rbps: {}, wbps: {}, riops: {}, wiops: {} };
}

/** cgroup v1 `blkio.throttle.*_device`: lines of `major:minor rate`. */
export function parseV1Throttle(text: string | null): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of (text ?? "").split("\n")) {
    const m = /^\s*(\d+:\d+)\s+(\d+)\s*$/.exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

/** cgroup v2 `io.max`: lines of `major:minor rbps=N wbps=max riops=N wiops=max`. */
export function parseIoMax(text: string | null): IoThrottleSeen {
  const seen = emptyIoThrottleSeen();
  for (const line of (text ?? "").split("\n")) {
    const [dev, ...pairs] = line.trim().split(/\s+/);
    if (!dev || !/^\d+:\d+$/.test(dev)) continue;
    for (const pair of pairs) {
      const [k, v] = pair.split("=");
      if ((k === "rbps" || k === "wbps" || k === "riops" || k === "wiops") && v && /^\d+$/.test(v))
        seen[k][dev] = Number(v);
    }
  }
  return seen;
}

/**
 * The writes that lift every throttle a cgroup shows (`seen`, as ioThrottlesNow read it):
 * on v1 a rate of 0 removes a device's rule; on v2 `max` does. Used when a sandbox is
 * being killed: a process blocked in throttled I/O (D state) cannot die until its I/O is
 * done, and at 256 KiB/s a few queued megabytes would keep it, its cgroup and its loop
 * device for minutes after destroy. The sandbox runs no code of its own by then.
 */
export function planThrottleLift(
  version: 1 | 2,
  seen: IoThrottleSeen,
): { key: IoLimitKey | "io.max"; line: string }[] {
  const writes: { key: IoLimitKey | "io.max"; line: string }[] = [];
  if (version === 2) {
    const devices = new Set(IO_LIMIT_KEYS.flatMap((k) => Object.keys(seen[THROTTLES[k].v2])));
    for (const dev of [...devices].sort()) {
      writes.push({ key: "io.max", line: `${dev} rbps=max wbps=max riops=max wiops=max` });
    }
    return writes;
  }
  for (const key of IO_LIMIT_KEYS) {
    for (const dev of Object.keys(seen[THROTTLES[key].v2]).sort()) {
      writes.push({ key, line: `${dev} 0` });
    }
  }
  return writes;
}

/** Each planned throttle that the cgroup does not show at exactly its rate. */
export function missingThrottles(plan: OciBlockIo | undefined, seen: IoThrottleSeen): string[] {
  const missing: string[] = [];
  for (const key of IO_LIMIT_KEYS) {
    const { oci, v2 } = THROTTLES[key];
    for (const t of plan?.[oci] ?? []) {
      const dev = deviceName(t);
      const got = seen[v2][dev];
      if (got !== t.rate) missing.push(`${v2} ${dev} ${got ?? "none"} (want ${t.rate})`);
    }
  }
  return missing;
}

export interface IoEnforcement {
  status: "ok" | "degraded" | "missing";
  detail: string;
  fix?: string;
}

function describeProbe(p: DeviceProbe): string {
  return p.kind === "block" ? deviceName(p.device) : p.kind === "memory" ? "memory" : "?";
}

/**
 * What the I/O limits bind on this host, in words a user can act on. On cgroup v1 the
 * blkio throttle sees only I/O that the sandbox's own tasks submit: reads that reach the
 * disk (page-cache hits cost nothing) and O_DIRECT writes. Buffered writes reach the disk
 * later from the kernel's writeback threads, which run outside the sandbox's cgroup, so
 * they are not throttled (v2 attributes writeback to the cgroup when the memory and io
 * controllers are both on). A tmpfs layer does no block I/O at all: its size is bounded
 * by the memory limit.
 */
export function describeIoEnforcement(input: {
  cgroupVersion: 1 | 2;
  /** v1: the blkio hierarchy has the throttle files; v2: `io` is in subtree_control. */
  controllerAvailable: boolean;
  /** v2: `memory` is enabled too, which cgroup writeback needs. */
  memoryControllerAvailable: boolean;
  /** What lies under the image cache and under the data directory. */
  image: DeviceProbe;
  data: DeviceProbe;
}): IoEnforcement {
  if (!input.controllerAvailable) {
    return {
      status: "missing",
      detail:
        input.cgroupVersion === 1
          ? "the blkio controller (throttle) is not available: --io-* limits are refused"
          : "the io controller is not enabled in the root cgroup: --io-* limits are refused",
      fix:
        input.cgroupVersion === 1
          ? "mount the blkio cgroup controller (kernel CONFIG_BLK_DEV_THROTTLING)"
          : "echo +io > /sys/fs/cgroup/cgroup.subtree_control",
    };
  }
  const decided = decideIoCarriers({ image: input.image, data: input.data });
  if (!decided.ok) {
    return {
      status: "missing",
      detail: `--io-* limits are refused: ${decided.reason}`,
      fix: "put the image cache (--image-dir) and the data directory (--data-dir) on ext4 or xfs on a local disk",
    };
  }
  const devices = `image ${describeProbe(input.image)}, data ${describeProbe(input.data)}, each loop layer (7:N)`;
  if (input.cgroupVersion === 1) {
    return {
      status: "degraded",
      detail: `cgroup v1 blkio throttle on ${devices}: limits reads that reach the disk and O_DIRECT writes; buffered writes are NOT limited (writeback runs outside the sandbox's cgroup); a tmpfs layer does no block I/O`,
      fix: "cgroup v2 (systemd.unified_cgroup_hierarchy=1) also limits buffered writes",
    };
  }
  return input.memoryControllerAvailable
    ? {
        status: "ok",
        detail: `cgroup v2 io.max on ${devices}: reads and writes, buffered writes included (cgroup writeback); a tmpfs layer does no block I/O`,
      }
    : {
        status: "degraded",
        detail: `cgroup v2 io.max on ${devices}: reads and O_DIRECT writes; buffered writes are not limited without the memory controller`,
        fix: "echo +memory > /sys/fs/cgroup/cgroup.subtree_control",
      };
}
