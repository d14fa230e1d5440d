/**
 * The sandbox's root: the image as the read-only lower layer of an overlay, and a writable
 * layer (upper + work) on a filesystem of its own whose size and inode count are the
 * sandbox's disk limit. `/`, `/tmp`, `$HOME` and `/work` all live on it, so one limit
 * bounds every writable place. Everything here is mounted by the host, outside the
 * sandbox, before runc starts, and removed after the container is deleted.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { chown, mkdir, open, rm } from "node:fs/promises";
import { CorralError } from "../../core/errors.js";
import { runCommand } from "../../core/proc.js";
import type { SandboxPaths } from "../../core/sandbox.js";
import {
  EXT4_LAYER_FLAGS,
  EXT4_LAYER_OPTIONS,
  type LayerMountPlan,
  type LayerOpsOutcome,
  type LayerOpsPlan,
  layerOpsArgv,
  layerOpsOutcome,
  layerOpsPlanProblem,
  mountOptionString,
  OVERLAY_FLAGS,
  OVERLAY_SOURCE,
  overlayOptions,
  planLayerDown,
  planLayerUp,
  TMPFS_LAYER_FLAGS,
  TMPFS_SOURCE,
  tmpfsLayerOptions,
  UPPER_MODE,
  upperDir,
  WORK_MODE,
  workDir,
} from "./layer-plan.js";
import type { LayerPool } from "./layer-pool.js";
import { LayerServer, LayerServerGone } from "./layer-server.js";
import { detachLoop, loopDevicesUnder, mountsUnder, unmountAllUnder } from "./mounts.js";

export type LayerPlan = LayerMountPlan;

async function must(argv: string[], what: string): Promise<void> {
  const r = await runCommand(argv, { timeoutMs: 60_000 });
  if (r.code !== 0) {
    throw new CorralError("runtime_failed", `${what} failed: ${(r.stderr || r.stdout).trim()}`);
  }
}

/**
 * Who carries out the layer plans: the supervisor binary (direct system calls), through
 * its resident layer-serve when it has one (no process of ours per plan) or its one-shot
 * layer-up and layer-down modes; or mount(8) and umount(8) when those are unavailable
 * here. One per host; it falls back to mount(8) for good at the first sign that the
 * kernel lacks what the direct path needs, and to the one-shot modes if layer-serve dies.
 */
export class LayerMounter {
  private readonly server: LayerServer | null;

  constructor(
    /** The supervisor binary, or null to use mount(8) from the start. */
    readonly helper: string | null,
    /** Why mount(8) is used instead of the supervisor's layer modes, or null. */
    public fallback: string | null = helper === null ? "no supervisor binary" : null,
    /** With a directory, plans for sandboxes under it go through a resident layer-serve. */
    serveRoot: string | null = null,
  ) {
    this.server = helper !== null && serveRoot !== null ? new LayerServer(helper, serveRoot) : null;
  }

  get direct(): boolean {
    return this.helper !== null && this.fallback === null;
  }

  /** Whether plans go through the resident layer-serve (until it fails). */
  get resident(): boolean {
    return this.direct && this.server?.usable === true;
  }

  /** Stop the resident layer-serve (it exits after the plan under way, if any). */
  close(): void {
    this.server?.close();
  }

  /**
   * Run a plan through the supervisor. Resolves "unsupported" (and falls back for good)
   * when this kernel lacks what it needs; rejects with a one-line CorralError when a step
   * fails (a failed layer-up has undone its mounts) or the plan is refused.
   */
  async run(plan: LayerOpsPlan, what: string): Promise<LayerOpsOutcome> {
    const helper = this.helper;
    if (helper === null) return { kind: "unsupported", message: "no supervisor binary" };
    const args = layerOpsArgv(plan);
    let outcome: LayerOpsOutcome | null = null;
    if (this.server?.usable && plan.within.startsWith(`${this.server.root}/`)) {
      try {
        const r = await this.server.run(args);
        outcome = layerOpsOutcome(r.code, r.stdout, r.stderr);
      } catch (err) {
        if (!(err instanceof LayerServerGone)) throw err;
        // Gone (killed, or it failed to start): the one-shot mode below runs the plan.
      }
    }
    outcome ??= await new Promise<LayerOpsOutcome>((resolve) => {
      execFile(
        helper,
        args,
        { timeout: 60_000, killSignal: "SIGKILL", maxBuffer: 1024 * 1024 },
        (error, stdout, stderr) => {
          if (error && typeof (error as NodeJS.ErrnoException).code === "string") {
            // It could not be started at all (ENOENT, EACCES): the mount(8) path still can.
            resolve({ kind: "unsupported", message: `${helper}: ${error.message}` });
            return;
          }
          const code = error ? Number((error as { code?: number }).code ?? 1) : 0;
          resolve(layerOpsOutcome(Number.isFinite(code) ? code : 1, stdout, stderr));
        },
      );
    });
    if (outcome.kind === "unsupported") {
      this.fallback = outcome.message;
      this.server?.close();
    }
    if (outcome.kind === "failed") {
      throw new CorralError("runtime_failed", `${what} failed: ${outcome.message}`);
    }
    return outcome;
  }
}

/**
 * mkfs.ext4 for a writable layer: no journal (ephemeral: a crash discards the layer
 * anyway), no reserved blocks, exactly the inode cap, no discard of the sparse file.
 */
export function ext4FormatArgv(file: string, inodes: number): string[] {
  return [
    "mkfs.ext4",
    "-q",
    "-F",
    "-O",
    "^has_journal",
    "-m",
    "0",
    "-N",
    String(inodes),
    "-E",
    "lazy_itable_init=1,nodiscard",
    file,
  ];
}

/** Where a sandbox's writable layer came from (reported in the create event). */
export type LayerSource = "tmpfs" | "pool" | "mkfs";

/**
 * The writable layer's file system, its upper and work directories and the overlay on the
 * sandbox's root, as planned by planLayerUp: through the supervisor's layer-up, or
 * mount(8) with the same flags and options. Returns the loop device attached, if any.
 */
async function mountPlanned(
  paths: SandboxPaths,
  plan: LayerPlan,
  mounter: LayerMounter,
): Promise<string | null> {
  const ops = planLayerUp(paths, plan);
  if (mounter.direct && layerOpsPlanProblem(ops) === null) {
    const done = await mounter.run(ops, "mounting the sandbox's layer and root");
    if (done.kind === "done") return done.loopDevices[0] ?? null;
  }
  if (plan.kind === "tmpfs") {
    await must(
      [
        "mount",
        "-t",
        "tmpfs",
        "-o",
        mountOptionString(tmpfsLayerOptions(plan), TMPFS_LAYER_FLAGS),
        TMPFS_SOURCE,
        paths.layer,
      ],
      "mounting the tmpfs layer",
    );
  } else {
    // mount -o loop sets autoclear, so unmounting also detaches the loop device.
    await must(
      [
        "mount",
        "-t",
        "ext4",
        "-o",
        mountOptionString(`loop,${EXT4_LAYER_OPTIONS}`, EXT4_LAYER_FLAGS),
        paths.layerImage,
        paths.layer,
      ],
      "mounting the disk layer",
    );
  }
  await mkdir(upperDir(paths), { mode: UPPER_MODE });
  await mkdir(workDir(paths), { mode: WORK_MODE });
  await chown(upperDir(paths), plan.rootUid, plan.rootUid);
  await must(
    [
      "mount",
      "-t",
      "overlay",
      "-o",
      mountOptionString(overlayOptions(paths, plan.lowerdir), OVERLAY_FLAGS),
      OVERLAY_SOURCE,
      paths.rootfs,
    ],
    "mounting the sandbox root",
  );
  return null;
}

/** Where a layer came from, and the loop device it is on (when layer-up said; else null). */
export interface MountedLayer {
  source: LayerSource;
  loopDevice: string | null;
}

export async function mountLayer(
  paths: SandboxPaths,
  plan: LayerPlan,
  pool: LayerPool | null,
  mounter: LayerMounter,
): Promise<MountedLayer> {
  mkdirSync(paths.layer, { mode: 0o711 });
  mkdirSync(paths.rootfs, { mode: 0o711 });
  if (plan.kind === "tmpfs") {
    await mountPlanned(paths, plan, mounter);
    return { source: "tmpfs", loopDevice: null };
  }
  const shape = { diskBytes: plan.diskBytes, inodes: plan.inodes };
  if (pool && (await pool.claim(shape, paths.layerImage))) {
    try {
      return { source: "pool", loopDevice: await mountPlanned(paths, plan, mounter) };
    } catch {
      // A damaged entry (say, from before a power loss): discard it, format afresh. (A
      // failure that is not the entry's fails again below, and is reported then.)
      await unmountLayer(paths, mounter);
      await rm(paths.layerImage, { force: true });
    }
  }
  // A sparse file: it takes host disk only as the sandbox writes.
  const fh = await open(paths.layerImage, "wx", 0o600);
  await fh.truncate(plan.diskBytes);
  await fh.close();
  await must(ext4FormatArgv(paths.layerImage, plan.inodes), "formatting the disk layer");
  return { source: "mkfs", loopDevice: await mountPlanned(paths, plan, mounter) };
}

/**
 * Unmount the sandbox's root and layer and detach its loop device; safe to repeat.
 * Returns only once nothing of it is mounted or attached. The layer's file stays (it goes
 * with the sandbox's directory).
 */
export async function unmountLayer(
  paths: SandboxPaths,
  mounter: LayerMounter,
  /** The mount points under the sandbox's directory, if the caller just read them. */
  known?: string[],
  /** The layer's loop device, as mountLayer reported it (only it is then checked). */
  loopDevice: string | null = null,
): Promise<void> {
  const mounts = known ?? (await mountsUnder(paths.dir));
  const ops = planLayerDown(paths, mounts, loopDevice);
  // Without the directory nothing can be mounted below it, but a loop device may still be
  // bound to a deleted file of it: the sweep below finds that one.
  const direct = mounter.direct && layerOpsPlanProblem(ops) === null && existsSync(paths.dir);
  const done = direct ? await mounter.run(ops, `unmounting ${paths.dir}`) : null;
  if (done?.kind !== "done") {
    await unmountAllUnder(paths.dir);
    for (const loop of await loopDevicesUnder(paths.dir)) await detachLoop(loop.name);
  }
}
