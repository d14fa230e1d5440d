/**
 * Files created or changed under /work, read from the overlay's upper directory after the
 * sandbox stopped (it lists exactly what the run wrote). The tree is attacker-made, so:
 * - every directory is opened with O_DIRECTORY | O_NOFOLLOW relative to its parent's
 *   open descriptor (through /proc/self/fd/N), and every file with O_NOFOLLOW the same
 *   way, so neither a symlink nor a swapped path can lead the walk out of the layer;
 * - names are handled as the bytes they are: a name that is not valid UTF-8 is reported
 *   (escaped) and skipped, never decoded into a string that could alias another name;
 * - only regular files are taken (no FIFOs, devices or whiteouts), each under the file
 *   cap, all of them together under the total cap (the disk limit: sparse files cannot
 *   make the host write more than the sandbox could hold), in a bounded depth;
 * - nothing is written outside the destination directory.
 */

import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { type FileHandle, lstat, mkdir, open, readdir, rm } from "node:fs/promises";
import path from "node:path";
import { ensureDir } from "../core/dirs.js";
import { CorralError } from "../core/errors.js";

export interface ChangedFile {
  path: string; // relative to /work
  size: number;
  sha256?: string;
  copied: boolean;
  skipped?: "too_large" | "unsafe_name" | "unchanged" | "total_cap" | "too_deep" | "write_failed";
  /** With write_failed: why the host could not write it (one line). */
  error?: string;
}

export const DEFAULT_FILE_CAP_BYTES = 256 * 1024 * 1024;
const MAX_FILES = 10_000;
/**
 * All the paths reported together, in characters: 10,000 files 64 levels deep in 255-byte
 * names would otherwise be 160 M characters of names on the host (and in the run's
 * result and event). Past it the walk stops, as it does past MAX_FILES.
 */
export const MAX_TOTAL_PATH_CHARS = 4 * 1024 * 1024;
/** Deeper than this is not walked (and each level holds one descriptor). */
export const MAX_DEPTH = 64;

/** A name from the sandbox is safe if it is a plain relative path that stays inside. */
export function isSafeRelativePath(rel: string): boolean {
  if (rel === "" || path.isAbsolute(rel) || rel.includes("\0")) return false;
  return rel.split("/").every((part) => part !== "" && part !== "." && part !== "..");
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** A name as text, or null when its bytes are not UTF-8 (it is then escaped for reports). */
export function nameOf(bytes: Buffer): string | null {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return null;
  }
}

/** Bytes shown safely: printable ASCII as is, everything else as \xNN. */
export function escapeName(bytes: Buffer): string {
  let out = "";
  for (const b of bytes)
    out +=
      b >= 0x20 && b < 0x7f && b !== 0x5c
        ? String.fromCharCode(b)
        : `\\x${b.toString(16).padStart(2, "0")}`;
  return out;
}

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
const FILE_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** A child of an open directory, as a path the kernel resolves from that descriptor. */
function under(dir: FileHandle, name: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`/proc/self/fd/${dir.fd}/`), name]);
}

export async function collectChangedFiles(
  upperWork: string,
  options: {
    outDir?: string;
    fileCapBytes?: number;
    /** All files together (default: unlimited; runs pass the disk limit). */
    totalCapBytes?: number;
    /**
     * Files put in before the run, as `relpath\0sha256`: one the run left as it was is
     * not the run's, so it is neither reported nor copied out.
     */
    unchanged?: ReadonlySet<string>;
    /** Set to true when the walk stopped at MAX_FILES or MAX_TOTAL_PATH_CHARS. */
    report?: { truncated: boolean };
  } = {},
): Promise<ChangedFile[]> {
  const unchangedPaths = new Set([...(options.unchanged ?? [])].map((k) => k.split("\0")[0]));
  const cap = options.fileCapBytes ?? DEFAULT_FILE_CAP_BYTES;
  let budget = options.totalCapBytes ?? Number.POSITIVE_INFINITY;
  const found: ChangedFile[] = [];
  // Absolute from here on: every destination is checked against it. And made before the
  // layer is opened, so that an unusable one fails with nothing of the layer held open.
  const outDir = options.outDir === undefined ? undefined : path.resolve(options.outDir);
  if (outDir) await ensureDir(outDir, "choose another --out directory", 0o755);
  let top: FileHandle;
  try {
    top = await open(upperWork, DIR_FLAGS);
  } catch {
    return found; // nothing under /work was written, or /work was replaced by a link
  }

  let pathChars = 0;
  const walk = async (dir: FileHandle, rel: string, depth: number): Promise<void> => {
    const entries = await readdir(`/proc/self/fd/${dir.fd}`, {
      withFileTypes: true,
      encoding: "buffer",
    });
    entries.sort((a, b) => Buffer.compare(a.name, b.name));
    for (const entry of entries) {
      if (found.length >= MAX_FILES || pathChars >= MAX_TOTAL_PATH_CHARS) {
        if (options.report) options.report.truncated = true;
        return;
      }
      if (!entry.isDirectory() && !entry.isFile()) continue; // links, FIFOs, devices, whiteouts
      const name = nameOf(entry.name);
      const shown = name ?? escapeName(entry.name);
      const childRel = rel === "" ? shown : `${rel}/${shown}`;
      pathChars += childRel.length;
      if (name === null || !isSafeRelativePath(childRel)) {
        found.push({ path: childRel, size: 0, copied: false, skipped: "unsafe_name" });
        continue;
      }
      if (entry.isDirectory()) {
        if (depth >= MAX_DEPTH) {
          found.push({ path: childRel, size: 0, copied: false, skipped: "too_deep" });
          continue;
        }
        let child: FileHandle;
        try {
          child = await open(under(dir, entry.name), DIR_FLAGS);
        } catch {
          continue; // swapped for a link meanwhile: not followed
        }
        try {
          await walk(child, childRel, depth + 1);
        } finally {
          await child.close();
        }
        continue;
      }
      const at = under(dir, entry.name);
      if (unchangedPaths.has(childRel)) {
        // Hash first, copy only if the run changed it.
        const seen = await takeFile(at, childRel, cap, Number.POSITIVE_INFINITY, undefined);
        if (options.unchanged?.has(`${childRel}\0${seen.sha256}`)) continue;
      }
      const taken = await takeFile(at, childRel, cap, budget, outDir);
      if (taken.copied || taken.sha256 !== undefined) budget -= taken.size;
      found.push(taken);
    }
  };
  try {
    await walk(top, "", 0);
  } finally {
    await top.close();
  }
  return found;
}

async function takeFile(
  at: Buffer,
  rel: string,
  cap: number,
  budget: number,
  outDir: string | undefined,
): Promise<ChangedFile> {
  let src: FileHandle;
  try {
    // O_NOFOLLOW + fstat: the file we read is the regular file we listed, not a
    // swapped-in link; O_NONBLOCK: a FIFO swapped in cannot hang the open.
    src = await open(at, FILE_FLAGS);
  } catch {
    return { path: rel, size: 0, copied: false, skipped: "unsafe_name" };
  }
  try {
    const st = await src.stat();
    if (!st.isFile()) return { path: rel, size: 0, copied: false, skipped: "unsafe_name" };
    if (st.size > cap) return { path: rel, size: st.size, copied: false, skipped: "too_large" };
    if (st.size > budget) return { path: rel, size: st.size, copied: false, skipped: "total_cap" };
    const hash = createHash("sha256");
    let out: FileHandle | null = null;
    let outPath: string | null = null;
    if (outDir) {
      const dest = path.join(outDir, rel);
      if (!dest.startsWith(outDir + path.sep)) {
        return { path: rel, size: st.size, copied: false, skipped: "unsafe_name" };
      }
      try {
        await mkdirNoFollow(outDir, path.dirname(rel));
        out = await open(
          dest,
          constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW,
          0o644,
        );
      } catch (err) {
        // The host cannot take this one (a name past PATH_MAX, a directory or a symbolic
        // link in its way, no permission): it is named as not copied, and the others go on.
        return notWritten(rel, st.size, err);
      }
      outPath = dest;
    }
    const buf = Buffer.allocUnsafe(1024 * 1024);
    let total = 0;
    try {
      for (;;) {
        const { bytesRead } = await src.read(buf, 0, buf.length, null);
        if (bytesRead === 0) break;
        total += bytesRead;
        if (total > cap || total > budget) {
          throw new CorralError("invalid_argument", `file ${rel} grew past the cap`);
        }
        hash.update(buf.subarray(0, bytesRead));
        if (out) {
          try {
            await out.write(buf, 0, bytesRead);
          } catch (err) {
            // A full disk or a failing one on the host: no half file is left behind.
            await out.close().catch(() => undefined);
            out = null;
            if (outPath) await rm(outPath, { force: true }).catch(() => undefined);
            return notWritten(rel, st.size, err);
          }
        }
      }
      return { path: rel, size: total, sha256: hash.digest("hex"), copied: out !== null };
    } finally {
      await out?.close();
    }
  } finally {
    await src.close();
  }
}

/** A file the host could not write out, with why (the errno code, or the message). */
function notWritten(rel: string, size: number, err: unknown): ChangedFile {
  const e = err as NodeJS.ErrnoException;
  const why = e.code === "ENAMETOOLONG" ? null : (e.code ?? e.message ?? String(err));
  return why === null
    ? { path: rel, size, copied: false, skipped: "unsafe_name" }
    : { path: rel, size, copied: false, skipped: "write_failed", error: String(why).slice(0, 200) };
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
