import { describe, expect, it } from "vitest";
import {
  EXT4_LAYER_FLAGS,
  EXT4_LAYER_OPTIONS,
  LAYER_OPS_EXIT,
  type LayerMountPlan,
  layerOpsArgv,
  layerOpsOutcome,
  layerOpsPathProblem,
  layerOpsPlanProblem,
  mountOptionString,
  OVERLAY_FLAGS,
  overlayOptions,
  planLayerDown,
  planLayerUp,
  TMPFS_LAYER_FLAGS,
  tmpfsLayerOptions,
} from "../../src/sandbox/runtime/layer-plan.js";

const dir = "/var/lib/corral/sandboxes/sb-0123456789ab";
const paths = {
  dir,
  layer: `${dir}/layer`,
  layerImage: `${dir}/layer.img`,
  rootfs: `${dir}/rootfs`,
};
const lowerdir = "/var/lib/corral/images/c319f3e828dc2be9/rootfs";
const ext4: LayerMountPlan = {
  kind: "ext4-loop",
  diskBytes: 1 << 30,
  inodes: 100_000,
  rootUid: 100_000_000,
  lowerdir,
};
const tmpfs: LayerMountPlan = { ...ext4, kind: "tmpfs", diskBytes: 256 << 20 };

describe("planLayerUp", () => {
  it("a loop-backed ext4: the layer file on a loop device, the two directories, the overlay", () => {
    expect(layerOpsArgv(planLayerUp(paths, ext4))).toEqual([
      "layer-up",
      dir,
      "loop-mount",
      `${dir}/layer.img`,
      `${dir}/layer`,
      "ext4",
      "nosuid,nodev,noatime",
      "nobarrier,noinit_itable",
      "mkdir",
      `${dir}/layer/upper`,
      "0755",
      "100000000",
      "100000000",
      "mkdir",
      `${dir}/layer/work`,
      "0700",
      "0",
      "0",
      "mount",
      "corral-root",
      `${dir}/rootfs`,
      "overlay",
      "nosuid,nodev",
      `lowerdir=${lowerdir},upperdir=${dir}/layer/upper,workdir=${dir}/layer/work`,
    ]);
  });

  it("a tmpfs: its size, inode cap and mode as options, then the same directories and overlay", () => {
    const argv = layerOpsArgv(planLayerUp(paths, tmpfs));
    expect(argv.slice(0, 8)).toEqual([
      "layer-up",
      dir,
      "mount",
      "corral-layer",
      `${dir}/layer`,
      "tmpfs",
      "nosuid,nodev",
      "size=268435456,nr_inodes=100000,mode=0711",
    ]);
    expect(argv.slice(8)).toEqual(layerOpsArgv(planLayerUp(paths, ext4)).slice(8));
  });

  it("keeps every path but the image's under the sandbox's directory", () => {
    const plan = planLayerUp(paths, ext4);
    expect(plan.within).toBe(dir);
    expect(layerOpsPlanProblem(plan)).toBeNull();
  });
});

describe("mount(8) gets the same options as the direct path", () => {
  it.each([
    [
      mountOptionString(`loop,${EXT4_LAYER_OPTIONS}`, EXT4_LAYER_FLAGS),
      "loop,nobarrier,noinit_itable,nosuid,nodev,noatime",
    ],
    [
      mountOptionString(tmpfsLayerOptions(tmpfs), TMPFS_LAYER_FLAGS),
      "size=268435456,nr_inodes=100000,mode=0711,nosuid,nodev",
    ],
    [
      mountOptionString(overlayOptions(paths, lowerdir), OVERLAY_FLAGS),
      `lowerdir=${lowerdir},upperdir=${dir}/layer/upper,workdir=${dir}/layer/work,nosuid,nodev`,
    ],
    [mountOptionString("", ["nodev"]), "nodev"],
  ])("%s", (got, want) => {
    expect(got).toBe(want);
  });
});

describe("planLayerDown", () => {
  it("unmounts in the order given, then detaches what is still bound under the directory", () => {
    expect(layerOpsArgv(planLayerDown(paths, [`${dir}/rootfs`, `${dir}/layer`]))).toEqual([
      "layer-down",
      dir,
      "umount",
      `${dir}/rootfs`,
      "umount",
      `${dir}/layer`,
      "loop-detach-under",
      dir,
    ]);
  });

  it("with nothing mounted, still sweeps the loop devices", () => {
    expect(layerOpsArgv(planLayerDown(paths, []))).toEqual([
      "layer-down",
      dir,
      "loop-detach-under",
      dir,
    ]);
  });

  it("with the layer's own loop device, checks that one instead of every device", () => {
    expect(layerOpsArgv(planLayerDown(paths, [`${dir}/layer`], "/dev/loop17"))).toEqual([
      "layer-down",
      dir,
      "umount",
      `${dir}/layer`,
      "loop-detach",
      "loop17",
      dir,
    ]);
  });

  it("sweeps every device when the one it is told is not plainly a loop device", () => {
    for (const bad of ["/dev/sda", "loop1", "/dev/loop", "/dev/loop1/x", "/dev/loop-1", ""]) {
      expect(planLayerDown(paths, [], bad).steps, bad).toEqual([{ op: "loop-detach-under", dir }]);
    }
  });
});

describe("layerOpsPathProblem", () => {
  it.each([
    ["/var/lib/corral/sandboxes/sb-x/layer", null],
    ["/a", null],
    ["relative/path", "not an absolute path"],
    ["/", "not an absolute path"],
    ["/a/", "not an absolute path"],
    ["/a//b", "is not canonical"],
    ["/a/./b", "is not canonical"],
    ["/a/../b", "is not canonical"],
    ["/a/..", "is not canonical"],
    ["/a b", expect.stringContaining("a space")],
    ["/a,b", expect.stringContaining("a comma")],
    ["/a:b", expect.stringContaining("a colon")],
    ["/a\\b", expect.stringContaining("a backslash")],
    ["/a\nb", expect.stringContaining("printable ASCII")],
    ["/daten/über", expect.stringContaining("printable ASCII")],
    [`/${"a".repeat(5000)}`, "too long"],
  ])("%j", (p, want) => {
    expect(layerOpsPathProblem(p)).toEqual(want);
  });

  it("a plan with an odd path goes to mount(8), named by that path", () => {
    const odd = { ...paths, dir: "/srv/my data/sb-x", layer: "/srv/my data/sb-x/layer" };
    expect(layerOpsPlanProblem(planLayerUp(odd, ext4))).toMatch(
      /^\/srv\/my data\/sb-x has a space/,
    );
    const oddImage = planLayerUp(paths, { ...ext4, lowerdir: "/images/a,b/rootfs" });
    expect(layerOpsPlanProblem(oddImage)).toMatch(/^\/images\/a,b\/rootfs has/);
  });
});

describe("layerOpsOutcome", () => {
  it("done: the loop devices it attached, from its stdout", () => {
    expect(layerOpsOutcome(0, "loop /dev/loop7\n", "")).toEqual({
      kind: "done",
      loopDevices: ["/dev/loop7"],
    });
    expect(layerOpsOutcome(0, "", "")).toEqual({ kind: "done", loopDevices: [] });
    expect(layerOpsOutcome(0, "loop /dev/sda\nnoise\n", "")).toEqual({
      kind: "done",
      loopDevices: [],
    });
  });

  it("unsupported (mount(8) takes over) and failed, each with one line", () => {
    expect(
      layerOpsOutcome(LAYER_OPS_EXIT.unsupported, "", "corral-supervisor: layer-up: x: ENOSYS\n"),
    ).toEqual({ kind: "unsupported", message: "corral-supervisor: layer-up: x: ENOSYS" });
    expect(layerOpsOutcome(LAYER_OPS_EXIT.failed, "", "a\n\nb\n")).toEqual({
      kind: "failed",
      message: "a; b",
    });
    expect(layerOpsOutcome(LAYER_OPS_EXIT.refused, "", "")).toEqual({
      kind: "failed",
      message: "exit 2",
    });
  });
});
