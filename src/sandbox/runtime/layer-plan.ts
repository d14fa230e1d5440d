/**
 * The mounts of a sandbox's root, planned as data: the one place that decides which file
 * goes on which mount point with which flags and options. The plan is carried out either
 * by the supervisor binary's `layer-up` / `layer-down` modes (direct system calls, one
 * process each way; src/supervisor/native/layer-ops.c checks the plan and runs it) or,
 * where those are unavailable, by mount(8) and umount(8) with the very same options
 * (layer.ts). Nothing here does I/O.
 */
import type { LayerKind, SandboxPaths } from "../../core/sandbox.js";

/** The mount flags layer-ops.c knows; mount(8) takes the same words in `-o`. */
export type MountFlag = "nosuid" | "nodev" | "noatime";

/** The writable layer's own file system, when it is a loop-backed ext4. */
export const EXT4_LAYER_FLAGS: readonly MountFlag[] = ["nosuid", "nodev", "noatime"];
/**
 * ext4's own options for it. The layer is one sandbox's scratch space, deleted with it, so
 * nothing in it ever needs to reach the disk: `nobarrier` sends no cache flushes down the
 * loop device (each one an fsync of the layer's file on the host, several at every
 * unmount), and `noinit_itable` leaves the inode tables of the fresh sparse file as they
 * are (zeros) instead of zeroing them again in the background, flushes and all.
 */
export const EXT4_LAYER_OPTIONS = "nobarrier,noinit_itable";
/** The writable layer's own file system, when it is a tmpfs. */
export const TMPFS_LAYER_FLAGS: readonly MountFlag[] = ["nosuid", "nodev"];
/** The sandbox's root: the image under the writable layer. */
export const OVERLAY_FLAGS: readonly MountFlag[] = ["nosuid", "nodev"];
/** Mount sources of file systems without a device (shown in mountinfo). */
export const TMPFS_SOURCE = "corral-layer";
export const OVERLAY_SOURCE = "corral-root";
/** Modes of the writable layer's directories. */
export const UPPER_MODE = 0o755;
export const WORK_MODE = 0o700;

export interface LayerMountPlan {
  kind: LayerKind;
  diskBytes: number;
  inodes: number;
  /** Host uid/gid of root inside the sandbox: owns the upper directory. */
  rootUid: number;
  lowerdir: string;
}

export function tmpfsLayerOptions(plan: Pick<LayerMountPlan, "diskBytes" | "inodes">): string {
  return `size=${plan.diskBytes},nr_inodes=${plan.inodes},mode=0711`;
}

export function upperDir(paths: Pick<SandboxPaths, "layer">): string {
  return `${paths.layer}/upper`;
}

export function workDir(paths: Pick<SandboxPaths, "layer">): string {
  return `${paths.layer}/work`;
}

export function overlayOptions(paths: Pick<SandboxPaths, "layer">, lowerdir: string): string {
  return `lowerdir=${lowerdir},upperdir=${upperDir(paths)},workdir=${workDir(paths)}`;
}

/** mount(8)'s `-o` for a file system's options and flags. */
export function mountOptionString(data: string, flags: readonly MountFlag[]): string {
  return [data, ...flags].filter((s) => s !== "").join(",");
}

/** One step of a plan; layer-ops.c accepts exactly these, with these arguments. */
export type LayerStep =
  | {
      op: "loop-mount";
      file: string;
      target: string;
      fstype: "ext4";
      flags: readonly MountFlag[];
      data: string;
    }
  | {
      op: "mount";
      source: string;
      target: string;
      fstype: "tmpfs" | "overlay";
      flags: readonly MountFlag[];
      data: string;
      /** The directories that `data` names (an overlay's), checked like every other path. */
      dirs?: readonly string[];
    }
  | { op: "mkdir"; path: string; mode: number; uid: number; gid: number }
  | { op: "umount"; target: string }
  | { op: "loop-detach-under"; dir: string }
  | { op: "loop-detach"; device: string; dir: string };

export interface LayerOpsPlan {
  mode: "layer-up" | "layer-down";
  /** Every path of the plan but the overlay's lower directory lies under it. */
  within: string;
  steps: LayerStep[];
}

/**
 * Mount the writable layer's file system (`fs`: the sandbox's ext4 file on a loop device,
 * or a tmpfs), make its upper and work directories, and mount the overlay on the root.
 */
export function planLayerUp(
  paths: Pick<SandboxPaths, "dir" | "layer" | "layerImage" | "rootfs">,
  plan: LayerMountPlan,
): LayerOpsPlan {
  const layerFs: LayerStep =
    plan.kind === "tmpfs"
      ? {
          op: "mount",
          source: TMPFS_SOURCE,
          target: paths.layer,
          fstype: "tmpfs",
          flags: TMPFS_LAYER_FLAGS,
          data: tmpfsLayerOptions(plan),
        }
      : {
          op: "loop-mount",
          file: paths.layerImage,
          target: paths.layer,
          fstype: "ext4",
          flags: EXT4_LAYER_FLAGS,
          data: EXT4_LAYER_OPTIONS,
        };
  return {
    mode: "layer-up",
    within: paths.dir,
    steps: [
      layerFs,
      // Root inside the sandbox must own the upper directory, or it cannot create files in /.
      {
        op: "mkdir",
        path: upperDir(paths),
        mode: UPPER_MODE,
        uid: plan.rootUid,
        gid: plan.rootUid,
      },
      { op: "mkdir", path: workDir(paths), mode: WORK_MODE, uid: 0, gid: 0 },
      {
        op: "mount",
        source: OVERLAY_SOURCE,
        target: paths.rootfs,
        fstype: "overlay",
        flags: OVERLAY_FLAGS,
        data: overlayOptions(paths, plan.lowerdir),
        dirs: [plan.lowerdir, upperDir(paths), workDir(paths)],
      },
    ],
  };
}

/**
 * Unmount `mounts` (the mount points under the sandbox's directory, in the order to
 * unmount them: see mountsUnder), then make sure no loop device is still bound to a file
 * under the directory (the layer's detaches itself at its unmount: autoclear). With the
 * layer's own device (`loopDevice`, as layer-up reported it) only that one is checked;
 * without, every loop device is (gc, a mount(8) layer), which costs most of a millisecond
 * on a host with a hundred of them.
 */
export function planLayerDown(
  paths: Pick<SandboxPaths, "dir">,
  mounts: readonly string[],
  loopDevice: string | null = null,
): LayerOpsPlan {
  const name = loopDevice === null ? null : /^\/dev\/(loop\d{1,8})$/.exec(loopDevice)?.[1];
  return {
    mode: "layer-down",
    within: paths.dir,
    steps: [
      ...mounts.map((target): LayerStep => ({ op: "umount", target })),
      name
        ? { op: "loop-detach", device: name, dir: paths.dir }
        : { op: "loop-detach-under", dir: paths.dir },
    ],
  };
}

/** The supervisor's arguments for a plan (after the binary). */
export function layerOpsArgv(plan: LayerOpsPlan): string[] {
  const argv = [plan.mode, plan.within];
  for (const s of plan.steps) {
    switch (s.op) {
      case "loop-mount":
        argv.push(s.op, s.file, s.target, s.fstype, s.flags.join(","), s.data);
        break;
      case "mount":
        argv.push(s.op, s.source, s.target, s.fstype, s.flags.join(","), s.data);
        break;
      case "mkdir":
        argv.push(s.op, s.path, s.mode.toString(8).padStart(4, "0"), String(s.uid), String(s.gid));
        break;
      case "umount":
        argv.push(s.op, s.target);
        break;
      case "loop-detach-under":
        argv.push(s.op, s.dir);
        break;
      case "loop-detach":
        argv.push(s.op, s.device, s.dir);
        break;
    }
  }
  return argv;
}

/**
 * Why layer-ops.c would refuse `p` as a path, or null: it takes only absolute, canonical
 * paths of printable ASCII without spaces, ",", ":" or "\" (which would change the
 * meaning of a mount option string).
 */
export function layerOpsPathProblem(p: string): string | null {
  if (!p.startsWith("/") || p === "/" || p.endsWith("/")) return "not an absolute path";
  if (p.length >= 4096) return "too long";
  if (!/^[\x21-\x7e]+$/.test(p) || /[,:\\]/.test(p)) {
    return "has a space, a comma, a colon, a backslash or a character outside printable ASCII";
  }
  if (
    p
      .split("/")
      .slice(1)
      .some((c) => c === "" || c === "." || c === "..")
  ) {
    return "is not canonical";
  }
  return null;
}

/** The paths of a plan, each of which layer-ops.c resolves. */
export function planPaths(plan: LayerOpsPlan): string[] {
  const out = [plan.within];
  for (const s of plan.steps) {
    if (s.op === "loop-mount") out.push(s.file, s.target);
    else if (s.op === "mount") out.push(s.target, ...(s.dirs ?? []));
    else if (s.op === "mkdir") out.push(s.path);
    else if (s.op === "umount") out.push(s.target);
    else out.push(s.dir);
  }
  return out;
}

/** Why the plan cannot go to layer-ops.c (then mount(8) carries it out), or null. */
export function layerOpsPlanProblem(plan: LayerOpsPlan): string | null {
  for (const p of planPaths(plan)) {
    const problem = layerOpsPathProblem(p);
    if (problem) return `${p} ${problem}`;
  }
  return null;
}

/** How a layer-up or layer-down ended, from its exit status and output. */
export type LayerOpsOutcome =
  | { kind: "done"; loopDevices: string[] }
  /** The kernel lacks what the direct path needs: use mount(8) instead. */
  | { kind: "unsupported"; message: string }
  | { kind: "failed"; message: string };

/** Exit statuses of layer-ops.c. */
export const LAYER_OPS_EXIT = { failed: 1, refused: 2, unsupported: 3 } as const;

export function layerOpsOutcome(code: number, stdout: string, stderr: string): LayerOpsOutcome {
  const message =
    stderr
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "")
      .join("; ") || `exit ${code}`;
  if (code === 0) {
    const loopDevices = stdout
      .split("\n")
      .map((l) => /^loop (\/dev\/loop\d+)$/.exec(l)?.[1])
      .filter((d): d is string => d !== undefined);
    return { kind: "done", loopDevices };
  }
  if (code === LAYER_OPS_EXIT.unsupported) return { kind: "unsupported", message };
  return { kind: "failed", message };
}
