import type { Limits } from "./limits.js";

/** The languages `corral run --lang` accepts. */
export const LANGUAGES = ["python", "r", "shell", "sql"] as const;
export type Language = (typeof LANGUAGES)[number];

/** The unprivileged host id range that sandbox ids 0..size-1 map to (all sandboxes share it). */
export interface IdRange {
  base: number;
  size: number;
}

/** The image a sandbox runs: a shifted, read-only root filesystem and its environment. */
export interface ImageRef {
  name: string;
  digest: string;
  rootfs: string;
  env: Record<string, string>;
  /** What the image runs by default (from an imported image's config), as `docker run` does. */
  entrypoint?: string[];
  cmd?: string[];
  /** The directory a program given by argv runs in, unless `--workdir` says otherwise. */
  workingDir?: string;
}

/**
 * Switches that deliberately weaken a sandbox. Only tests set them, through the library
 * (no CLI flag, no API field reaches them): they prove that the self-check refuses a
 * weakened sandbox, and give the seccomp matrix its unfiltered baseline.
 */
export interface TestOnlyWeakening {
  dropSeccomp?: boolean;
  dropUserNamespace?: boolean;
  /** Hand the sandbox out even though the self-check refused it (matrix baseline only). */
  ignoreSelfCheck?: boolean;
}

/** How the writable layer is backed: tmpfs counts as memory, so it is used only for small disks. */
export type LayerKind = "tmpfs" | "ext4-loop";

/** Everything needed to build one sandbox, before any I/O. */
export interface SandboxSpec {
  id: string;
  image: ImageRef;
  limits: Limits;
  ids: IdRange;
  /** Network: loopback only for now (later issues add egress through the proxy). */
  network: "none";
  hostname: string;
  testOnly?: TestOnlyWeakening;
}

/** Host paths of one sandbox, all under the data directory. */
export interface SandboxPaths {
  dir: string; // <data>/sandboxes/<id>
  bundle: string; // dir/bundle (config.json)
  rootfs: string; // dir/rootfs: the overlay mount point
  layer: string; // dir/layer: the writable layer's mount point (upper/ and work/ inside)
  layerImage: string; // dir/layer.img: the loop-backed ext4 file, when used
  socket: string; // dir/ctl.sock: the supervisor's listening socket
  runcLog: string; // dir/runc.log
  supervisor: string; // the supervisor binary, bind-mounted read-only
}

export function chooseLayerKind(limits: Pick<Limits, "diskBytes" | "memoryBytes">): LayerKind {
  // tmpfs pages are charged to the sandbox's memory cgroup, so a tmpfs layer may take at
  // most half the memory limit; anything larger gets its own loop-backed ext4.
  return limits.diskBytes * 2 <= limits.memoryBytes ? "tmpfs" : "ext4-loop";
}
