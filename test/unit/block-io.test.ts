import { describe, expect, it } from "vitest";
import { DEFAULT_LIMITS, MiB } from "../../src/core/limits.js";
import {
  classifyDevice,
  type DeviceProbe,
  decideIoCarriers,
  describeIoEnforcement,
  missingThrottles,
  parseIoMax,
  parseV1Throttle,
  planBlockIo,
  splitDevNumber,
  uniqueDevices,
} from "../../src/sandbox/runtime/block-io.js";

const vda = { major: 254, minor: 0 };
const loop3 = { major: 7, minor: 3 };
const noIo = { ioReadBps: 0, ioWriteBps: 0, ioReadIops: 0, ioWriteIops: 0 };
const block = (device: { major: number; minor: number }): DeviceProbe => ({
  kind: "block",
  device,
});

describe("splitDevNumber", () => {
  it.each<[bigint, number, number]>([
    [65024n, 254, 0], // /dev/vda as stat reports it
    [0x0801n, 8, 1], // sda1
    [0x0703n, 7, 3], // loop3
    [0x00100103n, 1, 0x103], // a minor above 255: bits 20.. hold its high part (as glibc reads it)
    [0x0000_1000_0000_0000n, 0x1000, 0], // a major above 4095: bits 44.. hold its high part
    [0x0000_0fff_fff0_0000n | 0xffn, 0, 0xffffffff], // the largest minor, no major bits
  ])("dev %s is %d:%d", (dev, major, minor) => {
    expect(splitDevNumber(dev)).toEqual({ major, minor });
  });
});

describe("planBlockIo", () => {
  it("plans nothing without I/O limits", () => {
    expect(planBlockIo(noIo, [vda, loop3])).toBeUndefined();
  });

  it("throttles every limited kind on every device, once per device", () => {
    const plan = planBlockIo({ ...noIo, ioReadBps: 4 * MiB, ioWriteIops: 100 }, [vda, loop3, vda]);
    expect(plan).toEqual({
      throttleReadBpsDevice: [
        { major: 254, minor: 0, rate: 4 * MiB },
        { major: 7, minor: 3, rate: 4 * MiB },
      ],
      throttleWriteIOPSDevice: [
        { major: 254, minor: 0, rate: 100 },
        { major: 7, minor: 3, rate: 100 },
      ],
    });
  });

  it("keeps the first of duplicate devices, in order", () => {
    expect(uniqueDevices([loop3, vda, { ...loop3 }])).toEqual([loop3, vda]);
  });
});

describe("reading throttles back", () => {
  it("parses cgroup v1 throttle files, ignoring junk", () => {
    expect(parseV1Throttle("254:0 4194304\n7:3 4194304\n")).toEqual({
      "254:0": 4194304,
      "7:3": 4194304,
    });
    expect(parseV1Throttle(null)).toEqual({});
    expect(parseV1Throttle("garbage\n7:3 x\n")).toEqual({});
  });

  it("parses cgroup v2 io.max, where max means no limit", () => {
    expect(
      parseIoMax("254:0 rbps=4194304 wbps=max riops=max wiops=100\n7:3 rbps=1 wbps=2"),
    ).toEqual({
      rbps: { "254:0": 4194304, "7:3": 1 },
      wbps: { "7:3": 2 },
      riops: {},
      wiops: { "254:0": 100 },
    });
  });

  it("names every planned throttle that is absent or at another rate", () => {
    const plan = planBlockIo({ ...noIo, ioReadBps: 4 * MiB, ioReadIops: 50 }, [vda, loop3]);
    const seen = parseIoMax("254:0 rbps=4194304 riops=50\n7:3 rbps=1048576");
    expect(missingThrottles(plan, seen)).toEqual([
      "rbps 7:3 1048576 (want 4194304)",
      "riops 7:3 none (want 50)",
    ]);
    expect(
      missingThrottles(plan, parseIoMax("254:0 rbps=4194304 riops=50\n7:3 rbps=4194304 riops=50")),
    ).toEqual([]);
  });
});

describe("which devices carry a sandbox's I/O", () => {
  it.each<[string, { major: number; minor: number }, number, DeviceProbe["kind"]]>([
    ["a disk", vda, 0xef53, "block"],
    ["a loop device", loop3, 0xef53, "block"],
    ["tmpfs", { major: 0, minor: 41 }, 0x01021994, "memory"],
    ["ramfs", { major: 0, minor: 42 }, 0x858458f6, "memory"],
    ["overlayfs", { major: 0, minor: 50 }, 0x794c7630, "unthrottleable"],
    ["NFS", { major: 0, minor: 51 }, 0x6969, "unthrottleable"],
    ["btrfs (anonymous device)", { major: 0, minor: 52 }, 0x9123683e, "unthrottleable"],
  ])("%s is %s", (_name, dev, magic, kind) => {
    expect(classifyDevice("/x", dev, magic).kind).toBe(kind);
  });

  it("throttles the image disk, the data disk and the loop device, once each", () => {
    expect(decideIoCarriers({ image: block(vda), data: block(vda), layer: block(loop3) })).toEqual({
      ok: true,
      devices: [
        { ...vda, carries: "image" },
        { ...loop3, carries: "layer" },
      ],
    });
  });

  it("needs nothing for carriers in memory (a tmpfs layer, a tmpfs data directory)", () => {
    expect(
      decideIoCarriers({ image: block(vda), data: { kind: "memory" }, layer: { kind: "memory" } }),
    ).toEqual({ ok: true, devices: [{ ...vda, carries: "image" }] });
  });

  it("refuses when any carrier's I/O cannot be throttled (fail closed)", () => {
    const d = decideIoCarriers({
      image: { kind: "unthrottleable", reason: "/img is on overlayfs" },
      data: block(vda),
      layer: block(loop3),
    });
    expect(d).toEqual({ ok: false, reason: "image: /img is on overlayfs" });
  });
});

describe("describeIoEnforcement", () => {
  const base = {
    controllerAvailable: true,
    memoryControllerAvailable: true,
    image: block(vda),
    data: block(vda),
  };

  it("cgroup v1: degraded, and says buffered writes are not limited", () => {
    const e = describeIoEnforcement({ ...base, cgroupVersion: 1 });
    expect(e.status).toBe("degraded");
    expect(e.detail).toMatch(/reads that reach the disk and O_DIRECT writes/);
    expect(e.detail).toMatch(/buffered writes are NOT limited/);
    expect(e.detail).toMatch(/tmpfs layer does no block I\/O/);
    expect(e.detail).toMatch(/image 254:0, data 254:0, each loop layer \(7:N\)/);
  });

  it("cgroup v2 with memory and io: ok, buffered writes included", () => {
    const e = describeIoEnforcement({ ...base, cgroupVersion: 2 });
    expect(e).toEqual({
      status: "ok",
      detail: expect.stringMatching(/buffered writes included/),
    });
  });

  it("cgroup v2 without memory: degraded", () => {
    const e = describeIoEnforcement({
      ...base,
      cgroupVersion: 2,
      memoryControllerAvailable: false,
    });
    expect(e.status).toBe("degraded");
    expect(e.fix).toBe("echo +memory > /sys/fs/cgroup/cgroup.subtree_control");
  });

  it.each([1, 2] as const)("cgroup v%d without the controller: missing, limits refused", (v) => {
    const e = describeIoEnforcement({ ...base, cgroupVersion: v, controllerAvailable: false });
    expect(e.status).toBe("missing");
    expect(e.detail).toMatch(/--io-\* limits are refused/);
  });

  it("an image cache on overlayfs: missing, with the fix", () => {
    const e = describeIoEnforcement({
      ...base,
      cgroupVersion: 1,
      image: { kind: "unthrottleable", reason: "/var/lib/corral/images is on overlayfs" },
    });
    expect(e.status).toBe("missing");
    expect(e.detail).toBe(
      "--io-* limits are refused: image: /var/lib/corral/images is on overlayfs",
    );
    expect(e.fix).toMatch(/ext4 or xfs/);
  });

  it("has no I/O limits by default", () => {
    expect(planBlockIo(DEFAULT_LIMITS, [vda])).toBeUndefined();
  });
});
