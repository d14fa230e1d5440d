/**
 * Finding the block devices that carry a sandbox's I/O, from the host: the device under a
 * path (the image's root, the data directory, the layer's mount point), mapped to its
 * whole disk, because the kernel throttles only whole disks (a partition is refused).
 * The decisions are in block-io.ts; this file only reads stat, statfs and sysfs.
 */
import { readFile, realpath, stat, statfs } from "node:fs/promises";
import path from "node:path";
import { CorralError } from "../../core/errors.js";
import {
  type CarrierDevice,
  classifyDevice,
  type DeviceProbe,
  decideIoCarriers,
  deviceName,
  splitDevNumber,
} from "./block-io.js";

/** What lies under `file`: a whole-disk block device, memory, or why it cannot be throttled. */
export async function probeDeviceUnder(file: string): Promise<DeviceProbe> {
  let probe: DeviceProbe;
  try {
    const [st, fs] = await Promise.all([stat(file, { bigint: true }), statfs(file)]);
    probe = classifyDevice(file, splitDevNumber(st.dev), fs.type);
  } catch (err) {
    return {
      kind: "unthrottleable",
      reason: `cannot stat ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    };
  }
  if (probe.kind !== "block") return probe;
  const sys = `/sys/dev/block/${deviceName(probe.device)}`;
  try {
    await stat(path.join(sys, "partition"));
  } catch {
    return probe; // a whole disk (device-mapper and loop devices are whole too)
  }
  try {
    const parent = path.dirname(await realpath(sys));
    const [major, minor] = (await readFile(path.join(parent, "dev"), "utf8")).trim().split(":");
    return { kind: "block", device: { major: Number(major), minor: Number(minor) } };
  } catch {
    return {
      kind: "unthrottleable",
      reason: `cannot find the disk of partition ${deviceName(probe.device)}`,
    };
  }
}

/**
 * The devices to throttle for a sandbox with I/O limits: under the image's root, the
 * data directory and the mounted writable layer. Refuses (fail closed) when some I/O
 * would reach a device that cannot be throttled.
 */
export async function findIoCarriers(paths: {
  imageRootfs: string;
  dataDir: string;
  layerMount: string;
}): Promise<CarrierDevice[]> {
  const [image, data, layer] = await Promise.all([
    probeDeviceUnder(paths.imageRootfs),
    probeDeviceUnder(paths.dataDir),
    probeDeviceUnder(paths.layerMount),
  ]);
  const decided = decideIoCarriers({ image, data, layer });
  if (!decided.ok) {
    throw new CorralError(
      "prerequisite_missing",
      `I/O limits cannot be enforced here: ${decided.reason}`,
      "run corral doctor (see the I/O limits line)",
    );
  }
  return decided.devices;
}
