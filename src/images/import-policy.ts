/**
 * What one tar entry of an imported image may do to the tree being built: the pure half
 * of `corral image import`. The tree is written by import.ts, which additionally checks,
 * with lstat on every component, that no write, hard link or whiteout goes through a
 * symbolic link already in the tree. Nothing here does I/O.
 *
 * Decisions, and why:
 * - A path that is absolute or has a ".." component is refused: an archive that names a
 *   place outside itself is hostile or broken, and silently stripping it (as GNU tar does)
 *   would import a different image than the one given. "." components and a leading "./"
 *   are harmless and dropped.
 * - Symbolic link targets are kept verbatim, absolute ones too: they resolve inside the
 *   sandbox's root, and the importer never follows them.
 * - A hard link must name an entry inside the tree, by a relative path without "..".
 * - Character and block devices are refused: a sandbox has no use for device nodes (it
 *   gets a minimal /dev of its own), and one in the image cache is a way onto the host's
 *   devices for anything that later reads the cache without nodev.
 * - FIFOs are skipped: they hold no data, a program that needs one makes it at run time,
 *   and skipping (rather than refusing) keeps images made from real systems importable.
 * - setuid and setgid bits are stripped (and counted): nothing in a sandbox can gain
 *   privileges from them (no_new_privileges), so they could only matter outside one.
 * - Owners outside the sandbox's ids 0..65535 are refused: they could not be shifted into
 *   the sandbox's range.
 * - OCI whiteouts: `.wh.NAME` deletes NAME of the lower layers, `.wh..wh..opq` makes its
 *   directory opaque; other `.wh..wh.` names are aufs bookkeeping and are skipped.
 */
import { ID_RANGE_SIZE } from "../core/config.js";
import { quoteUntrusted } from "../core/errors.js";
import type { TarHeader } from "./tar.js";

export const WHITEOUT_PREFIX = ".wh.";
export const OPAQUE_WHITEOUT = ".wh..wh..opq";

interface Owned {
  uid: number;
  gid: number;
  mtime: number;
}

/** What to do with one entry. Paths are relative to the tree's root, "/"-separated, normalised. */
export type EntryDecision =
  | { kind: "refuse"; reason: string }
  /** Not imported: a FIFO, or aufs bookkeeping. Counted, and reported as a note. */
  | { kind: "skip"; what: "fifo" | "aufs"; reason: string }
  /** The archive's entry for the tree's root ("./"): it exists already, nothing to do. */
  | { kind: "root" }
  | ({ kind: "dir"; path: string; mode: number; strippedBits: boolean } & Owned)
  | ({ kind: "file"; path: string; mode: number; size: number; strippedBits: boolean } & Owned)
  | ({ kind: "symlink"; path: string; target: string } & Owned)
  | { kind: "hardlink"; path: string; target: string }
  /** Delete `path` as the lower layers left it. */
  | { kind: "whiteout"; path: string }
  /** Hide everything the lower layers put in `dir` ("" is the root). */
  | { kind: "opaque"; dir: string };

export type PathCheck = { ok: true; path: string } | { ok: false; reason: string };

/**
 * A member name as a normalised relative path ("" for the root itself), or why not.
 * Exported for the archive's own member names (manifest.json's layer paths) too.
 */
export function normaliseArchivePath(name: string): PathCheck {
  if (name.includes("\0")) return { ok: false, reason: "contains a NUL byte" };
  if (name.startsWith("/")) return { ok: false, reason: "is an absolute path" };
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) return { ok: false, reason: 'contains ".."' };
  return { ok: true, path: parts.join("/") };
}

const MAX_SYMLINK_TARGET = 4095;

export function decideTarEntry(h: TarHeader): EntryDecision {
  const name = normaliseArchivePath(h.name);
  if (!name.ok) return { kind: "refuse", reason: `its path ${name.reason}` };
  const path = name.path;

  if (h.type === "sparse" || Object.keys(h.pax).some((k) => k.startsWith("GNU.sparse."))) {
    return { kind: "refuse", reason: "GNU sparse files are not supported" };
  }
  if (h.type === "char" || h.type === "block") {
    return {
      kind: "refuse",
      reason: `it is a ${h.type === "char" ? "character" : "block"} device (${h.devmajor},${h.devminor}); images may not hold device nodes`,
    };
  }
  if (h.type === "other") {
    return {
      kind: "refuse",
      reason: `its entry type ${quoteUntrusted(h.typeflag)} is not supported`,
    };
  }

  if (path === "") {
    if (h.type === "dir") return { kind: "root" };
    return { kind: "refuse", reason: "it names the root but is not a directory" };
  }

  const slash = path.lastIndexOf("/");
  const parent = slash < 0 ? "" : path.slice(0, slash);
  const base = slash < 0 ? path : path.slice(slash + 1);
  if (base === OPAQUE_WHITEOUT) return { kind: "opaque", dir: parent };
  if (path.split("/").some((part) => part.startsWith(`${WHITEOUT_PREFIX}${WHITEOUT_PREFIX}`))) {
    return { kind: "skip", what: "aufs", reason: "aufs metadata" };
  }
  if (base.startsWith(WHITEOUT_PREFIX)) {
    const victim = base.slice(WHITEOUT_PREFIX.length);
    if (victim === "" || victim === "." || victim === "..") {
      return { kind: "refuse", reason: "it is a whiteout of no valid name" };
    }
    return { kind: "whiteout", path: parent === "" ? victim : `${parent}/${victim}` };
  }

  if (h.type === "fifo") return { kind: "skip", what: "fifo", reason: "FIFOs are not imported" };

  const owned = (): Owned | string => {
    for (const [what, id] of [
      ["uid", h.uid],
      ["gid", h.gid],
    ] as const) {
      if (!Number.isInteger(id) || id < 0 || id >= ID_RANGE_SIZE) {
        return `it is owned by ${what} ${id}, outside the sandbox's ids 0..${ID_RANGE_SIZE - 1}`;
      }
    }
    return { uid: h.uid, gid: h.gid, mtime: h.mtime };
  };

  switch (h.type) {
    case "dir":
    case "file": {
      const o = owned();
      if (typeof o === "string") return { kind: "refuse", reason: o };
      const mode = h.mode & 0o7777;
      const stripped = mode & ~0o6000;
      const common = { path, mode: stripped, strippedBits: stripped !== mode, ...o };
      return h.type === "dir"
        ? { kind: "dir", ...common }
        : { kind: "file", ...common, size: h.size };
    }
    case "symlink": {
      const o = owned();
      if (typeof o === "string") return { kind: "refuse", reason: o };
      if (h.linkname === "") return { kind: "refuse", reason: "it is a symlink with no target" };
      if (h.linkname.includes("\0"))
        return { kind: "refuse", reason: "its symlink target contains a NUL byte" };
      if (Buffer.byteLength(h.linkname) > MAX_SYMLINK_TARGET)
        return { kind: "refuse", reason: "its symlink target is too long" };
      return { kind: "symlink", path, target: h.linkname, ...o };
    }
    case "hardlink": {
      const target = normaliseArchivePath(h.linkname);
      if (!target.ok) return { kind: "refuse", reason: `its hard link target ${target.reason}` };
      if (target.path === "") return { kind: "refuse", reason: "it is a hard link to the root" };
      if (target.path === path) return { kind: "refuse", reason: "it is a hard link to itself" };
      return { kind: "hardlink", path, target: target.path };
    }
  }
}

/** The directories above `path` ("a/b/c" → ["a", "a/b"]). */
export function parentsOf(path: string): string[] {
  const parts = path.split("/");
  const out: string[] = [];
  for (let i = 1; i < parts.length; i++) out.push(parts.slice(0, i).join("/"));
  return out;
}
