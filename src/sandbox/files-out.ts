/**
 * Files created or changed under /work, read from the overlay's upper directory after the
 * sandbox stopped (it lists exactly what the run wrote). The tree is attacker-made: this
 * walk never follows a symlink, copies only regular files (no FIFOs, devices or overlay
 * whiteouts), skips files over the size cap, and refuses any name that would leave the
 * destination directory.
 */

import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { lstat, mkdir, open, readdir } from "node:fs/promises";
import path from "node:path";
import { ensureDir } from "../core/dirs.js";
import { CorralError } from "../core/errors.js";

export interface ChangedFile {
  path: string; // relative to /work
  size: number;
  sha256?: string;
  copied: boolean;
  skipped?: "too_large" | "unsafe_name" | "unchanged";
}

export const DEFAULT_FILE_CAP_BYTES = 256 * 1024 * 1024;
const MAX_FILES = 10_000;

/** A name from the sandbox is safe if it is a plain relative path that stays inside. */
export function isSafeRelativePath(rel: string): boolean {
  if (rel === "" || path.isAbsolute(rel) || rel.includes("\0")) return false;
  return rel.split("/").every((part) => part !== "" && part !== "." && part !== "..");
}

export async function collectChangedFiles(
  upperWork: string,
  options: {
    outDir?: string;
    fileCapBytes?: number;
    /**
     * Files put in before the run, as `relpath\0sha256`: one the run left as it was is
     * not the run's, so it is neither reported nor copied out.
     */
    unchanged?: ReadonlySet<string>;
  } = {},
): Promise<ChangedFile[]> {
  const unchangedPaths = new Set([...(options.unchanged ?? [])].map((k) => k.split("\0")[0]));
  const cap = options.fileCapBytes ?? DEFAULT_FILE_CAP_BYTES;
  const found: ChangedFile[] = [];
  let top: Awaited<ReturnType<typeof lstat>>;
  try {
    top = await lstat(upperWork);
  } catch {
    return found; // nothing under /work was written
  }
  if (!top.isDirectory()) return found; // /work replaced by a link or file: nothing to take
  if (options.outDir) await ensureDir(options.outDir, "choose another --out directory");

  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(path.join(upperWork, rel), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const entry of entries) {
      if (found.length >= MAX_FILES) return;
      const childRel = rel === "" ? entry.name : `${rel}/${entry.name}`;
      if (entry.isDirectory()) {
        await walk(childRel);
      } else if (entry.isFile()) {
        if (unchangedPaths.has(childRel)) {
          // Hash first, copy only if the run changed it.
          const seen = await takeFile(upperWork, childRel, cap, undefined);
          if (options.unchanged?.has(`${childRel}\0${seen.sha256}`)) continue;
        }
        found.push(await takeFile(upperWork, childRel, cap, options.outDir));
      }
      // symlinks, FIFOs, sockets, devices and whiteouts are not files to bring out
    }
  };
  await walk("");
  return found;
}

async function takeFile(
  upperWork: string,
  rel: string,
  cap: number,
  outDir: string | undefined,
): Promise<ChangedFile> {
  if (!isSafeRelativePath(rel))
    return { path: rel, size: 0, copied: false, skipped: "unsafe_name" };
  // O_NOFOLLOW + fstat: the file we read is the regular file we listed, not a swapped-in link.
  const src = await open(path.join(upperWork, rel), constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = await src.stat();
    if (!st.isFile()) return { path: rel, size: 0, copied: false, skipped: "unsafe_name" };
    if (st.size > cap) return { path: rel, size: st.size, copied: false, skipped: "too_large" };
    const hash = createHash("sha256");
    let out: Awaited<ReturnType<typeof open>> | null = null;
    if (outDir) {
      const dest = path.join(outDir, rel);
      if (!dest.startsWith(path.resolve(outDir) + path.sep)) {
        return { path: rel, size: st.size, copied: false, skipped: "unsafe_name" };
      }
      await mkdirNoFollow(outDir, path.dirname(rel));
      try {
        out = await open(
          dest,
          constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW,
          0o644,
        );
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ELOOP") throw err;
        throw new CorralError(
          "invalid_argument",
          `refusing to write ${dest}: it is a symbolic link`,
        );
      }
    }
    try {
      const buf = Buffer.allocUnsafe(1024 * 1024);
      let total = 0;
      for (;;) {
        const { bytesRead } = await src.read(buf, 0, buf.length, null);
        if (bytesRead === 0) break;
        total += bytesRead;
        if (total > cap) throw new CorralError("invalid_argument", `file ${rel} grew past the cap`);
        hash.update(buf.subarray(0, bytesRead));
        if (out) await out.write(buf, 0, bytesRead);
      }
      return { path: rel, size: total, sha256: hash.digest("hex"), copied: out !== null };
    } finally {
      await out?.close();
    }
  } finally {
    await src.close();
  }
}

/** Create outDir/relDir one level at a time, refusing any existing symlink on the way. */
async function mkdirNoFollow(outDir: string, relDir: string): Promise<void> {
  if (relDir === "." || relDir === "") return;
  let current = path.resolve(outDir);
  for (const part of relDir.split("/")) {
    current = path.join(current, part);
    try {
      const st = await lstat(current);
      if (!st.isDirectory()) {
        throw new CorralError(
          "invalid_argument",
          `output path ${current} exists and is not a directory`,
        );
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      await mkdir(current);
    }
  }
}
