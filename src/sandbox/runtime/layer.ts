/**
 * The sandbox's root: the image as the read-only lower layer of an overlay, and a writable
 * layer (upper + work) on a filesystem of its own whose size and inode count are the
 * sandbox's disk limit. `/`, `/tmp`, `$HOME` and `/work` all live on it, so one limit
 * bounds every writable place. Everything here is mounted by the host, outside the
 * sandbox, before runc starts, and removed after the container is deleted.
 */
import { chown, mkdir, open, rm } from "node:fs/promises";
import { CorralError } from "../../core/errors.js";
import { runCommand } from "../../core/proc.js";
import type { LayerKind, SandboxPaths } from "../../core/sandbox.js";
import type { LayerPool } from "./layer-pool.js";
import { detachLoop, loopDevicesUnder, unmountAllUnder } from "./mounts.js";

export interface LayerPlan {
  kind: LayerKind;
  diskBytes: number;
  inodes: number;
  /** Host uid/gid of root inside the sandbox: owns the upper directory. */
  rootUid: number;
  lowerdir: string;
}

async function must(argv: string[], what: string): Promise<void> {
  const r = await runCommand(argv, { timeoutMs: 60_000 });
  if (r.code !== 0) {
    throw new CorralError("runtime_failed", `${what} failed: ${(r.stderr || r.stdout).trim()}`);
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

async function mountExt4(paths: SandboxPaths): Promise<void> {
  // mount -o loop sets autoclear, so unmounting also detaches the loop device.
  await must(
    ["mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noatime", paths.layerImage, paths.layer],
    "mounting the disk layer",
  );
}

export async function mountLayer(
  paths: SandboxPaths,
  plan: LayerPlan,
  pool: LayerPool | null = null,
): Promise<LayerSource> {
  await mkdir(paths.layer, { mode: 0o711 });
  await mkdir(paths.rootfs, { mode: 0o711 });
  let source: LayerSource = plan.kind === "tmpfs" ? "tmpfs" : "mkfs";
  if (plan.kind === "tmpfs") {
    await must(
      [
        "mount",
        "-t",
        "tmpfs",
        "-o",
        `size=${plan.diskBytes},nr_inodes=${plan.inodes},mode=0711,nosuid,nodev`,
        "corral-layer",
        paths.layer,
      ],
      "mounting the tmpfs layer",
    );
  } else {
    const shape = { diskBytes: plan.diskBytes, inodes: plan.inodes };
    if (pool && (await pool.claim(shape, paths.layerImage))) {
      try {
        await mountExt4(paths);
        source = "pool";
      } catch {
        // A damaged entry (say, from before a power loss): discard it, format afresh.
        await unmountAllUnder(paths.layer);
        for (const loop of await loopDevicesUnder(paths.dir)) await detachLoop(loop.name);
        await rm(paths.layerImage, { force: true });
      }
    }
    if (source === "mkfs") {
      // A sparse file: it takes host disk only as the sandbox writes.
      const fh = await open(paths.layerImage, "wx", 0o600);
      await fh.truncate(plan.diskBytes);
      await fh.close();
      await must(ext4FormatArgv(paths.layerImage, plan.inodes), "formatting the disk layer");
      await mountExt4(paths);
    }
  }
  const upper = `${paths.layer}/upper`;
  const work = `${paths.layer}/work`;
  await mkdir(upper, { mode: 0o755 });
  await mkdir(work, { mode: 0o700 });
  // Root inside the sandbox must own the upper directory, or it cannot create files in /.
  await chown(upper, plan.rootUid, plan.rootUid);
  await must(
    [
      "mount",
      "-t",
      "overlay",
      "-o",
      `lowerdir=${plan.lowerdir},upperdir=${upper},workdir=${work},nosuid,nodev`,
      "corral-root",
      paths.rootfs,
    ],
    "mounting the sandbox root",
  );
  return source;
}

/** Unmount the sandbox's root and layer (and detach the loop device); safe to repeat. */
export async function unmountLayer(paths: SandboxPaths): Promise<void> {
  await unmountAllUnder(paths.dir);
  for (const loop of await loopDevicesUnder(paths.dir)) await detachLoop(loop.name);
  await rm(paths.layerImage, { force: true });
}
