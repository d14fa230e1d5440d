/**
 * Shift a root filesystem's ownership into the sandboxes' host id range, once, at build
 * time. A sandbox's user namespace maps its ids 0..65535 to base..base+65535; a file owned
 * by host uid 0 would show up as `nobody` inside, so every owner and group (root's, and
 * shadow, utmp, mail, staff…) moves by `base`. runc 1.1 has no idmapped mounts, so this is
 * the only way to share one image, read-only, between sandboxes.
 */
import type { Stats } from "node:fs";
import { chmod, lchown, lstat } from "node:fs/promises";
import { ID_RANGE_SIZE } from "../core/config.js";
import { CorralError } from "../core/errors.js";
import { walkTree } from "./digest.js";

export interface ShiftResult {
  /** Entries whose owner was changed (each hard-linked inode once). */
  entries: number;
  /** Entries visited, the root included (input for the digest's progress). */
  visited: number;
  /** Regular files and directories whose setuid/setgid/sticky bits were put back after chown. */
  specialModes: number;
}

/** Whether the tree at `root` looks shifted already: its root directory is owned outside 0..65535. */
export async function isShifted(root: string): Promise<boolean> {
  const s = await lstat(root);
  return s.uid >= ID_RANGE_SIZE || s.gid >= ID_RANGE_SIZE;
}

/**
 * Add `base` to the owner and group of every entry under `root` (lchown: links are changed,
 * never followed). Refuses a tree that is already shifted or holds an id outside the
 * sandbox range. chown(2) clears setuid/setgid (and file capabilities: those stay cleared,
 * as nothing in a sandbox has capabilities to use them), so the mode is restored after.
 */
export async function shiftTree(
  root: string,
  base: number,
  options: { concurrency?: number; onProgress?: (entriesDone: number) => void } = {},
): Promise<ShiftResult> {
  if (!Number.isInteger(base) || base < ID_RANGE_SIZE || base + ID_RANGE_SIZE > 2 ** 32 - 1) {
    throw new CorralError(
      "invalid_argument",
      `uid base ${base} is not usable: it must be an integer from ${ID_RANGE_SIZE} to ${2 ** 32 - 1 - ID_RANGE_SIZE}`,
    );
  }
  if (await isShifted(root)) {
    const s = await lstat(root);
    throw new CorralError(
      "build_failed",
      `${root} is already shifted (owned by ${s.uid}:${s.gid}); refusing to shift it twice`,
    );
  }
  const seen = new Set<string>();
  const special: { abs: string; mode: number }[] = [];
  let entries = 0;
  let visited = 0;
  await walkTree(
    root,
    async (rel: string, stats: Stats, abs: string) => {
      visited++;
      if (stats.nlink > 1 && !stats.isDirectory()) {
        // Another name of an inode already shifted: shifting it again would add base twice.
        const inode = `${stats.dev}:${stats.ino}`;
        if (seen.has(inode)) return;
        seen.add(inode);
      }
      if (stats.uid >= ID_RANGE_SIZE || stats.gid >= ID_RANGE_SIZE) {
        throw new CorralError(
          "build_failed",
          `${rel} in the image is owned by ${stats.uid}:${stats.gid}, outside the sandbox's ids 0..${ID_RANGE_SIZE - 1}`,
        );
      }
      await lchown(abs, stats.uid + base, stats.gid + base);
      entries++;
      if (!stats.isSymbolicLink() && (stats.mode & 0o7000) !== 0) {
        await chmod(abs, stats.mode & 0o7777);
        special.push({ abs, mode: stats.mode & 0o7777 });
      }
      if (options.onProgress && entries % 1000 === 0) options.onProgress(entries);
    },
    { concurrency: options.concurrency ?? 32 },
  );
  // A restored bit that did not stick (no CAP_FSETID) would silently break su, passwd…
  for (const { abs, mode } of special) {
    const after = await lstat(abs);
    if ((after.mode & 0o7777) !== mode) {
      throw new CorralError(
        "build_failed",
        `could not restore mode ${mode.toString(8)} of ${abs} after shifting it (got ${(after.mode & 0o7777).toString(8)})`,
      );
    }
  }
  return { entries, visited, specialModes: special.length };
}
