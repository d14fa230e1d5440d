/**
 * What a session changed in its writable layer, from the host, while the sandbox runs.
 *
 * The layer's upper directory is written by the sandbox as we read it, so the walk must
 * not be redirectable: every directory is opened with O_DIRECTORY | O_NOFOLLOW relative
 * to its parent's open descriptor (through /proc/self/fd/N, which names our own open
 * directory, not a path in the sandbox), and every child is lstat'ed, never opened,
 * followed or read. A directory swapped for a symlink mid-walk fails its O_NOFOLLOW open
 * and is reported as it is (a symlink); nothing outside the layer is ever listed. Only
 * metadata is taken: names, types, sizes, times.
 */
import { constants } from "node:fs";
import { lstat, open, readdir } from "node:fs/promises";
import { escapeName, nameOf } from "./files-out.js";

export type LayerEntryType = "file" | "dir" | "symlink" | "whiteout" | "other";

export interface LayerEntry {
  type: LayerEntryType;
  size: number;
  mtimeMs: number;
  ino: number;
}

/** Path inside the sandbox ("/work/a.txt") → entry, for everything in the upper layer. */
export type LayerSnapshot = Map<string, LayerEntry>;

export interface FileChange {
  path: string;
  change: "created" | "modified" | "deleted";
  type: LayerEntryType;
  size: number;
}

export const MAX_WALK_ENTRIES = 200_000;
/** Directories deeper than this are listed but not entered (each level holds one fd). */
export const MAX_WALK_DEPTH = 64;
/** All paths of one snapshot together, in UTF-16 units: the host's memory bound. */
export const MAX_WALK_PATH_CHARS = 16 * 1024 * 1024;

function typeOf(st: Awaited<ReturnType<typeof lstat>>): LayerEntryType {
  if (st.isFile()) return "file";
  if (st.isDirectory()) return "dir";
  if (st.isSymbolicLink()) return "symlink";
  // overlayfs marks a deleted lower file with a 0:0 character device in the upper layer
  if (st.isCharacterDevice() && st.rdev === 0) return "whiteout";
  return "other";
}

/**
 * A name as the walk records it: its text, or, when its bytes are not UTF-8 (or its text
 * has a backslash, which the escapes use), the bytes escaped (\xNN), so that two different
 * names can never come out as one.
 */
export function layerName(bytes: Buffer): string {
  const text = nameOf(bytes);
  return text !== null && !text.includes("\\") ? text : escapeName(bytes);
}

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

/**
 * Walk the upper directory safely (see above), within budgets: at most MAX_WALK_ENTRIES
 * entries, MAX_WALK_DEPTH levels, MAX_WALK_PATH_CHARS of path text, and `deadlineMs`
 * of wall time; past any of them the snapshot is marked truncated.
 */
export async function snapshotLayer(
  upperDir: string,
  opts: { deadlineMs?: number } = {},
): Promise<{ snapshot: LayerSnapshot; truncated: boolean }> {
  const snapshot: LayerSnapshot = new Map();
  let truncated = false;
  let pathChars = 0;
  const deadline = performance.now() + (opts.deadlineMs ?? 10_000);
  let root: Awaited<ReturnType<typeof open>>;
  try {
    root = await open(upperDir, DIR_FLAGS);
  } catch {
    return { snapshot, truncated };
  }
  const walk = async (
    dir: Awaited<ReturnType<typeof open>>,
    inside: string,
    depth: number,
  ): Promise<void> => {
    const base = `/proc/self/fd/${dir.fd}/`;
    let names: Buffer[];
    try {
      names = await readdir(`/proc/self/fd/${dir.fd}`, { encoding: "buffer" });
    } catch {
      return; // removed meanwhile
    }
    names.sort(Buffer.compare);
    for (const raw of names) {
      if (
        snapshot.size >= MAX_WALK_ENTRIES ||
        pathChars >= MAX_WALK_PATH_CHARS ||
        performance.now() > deadline
      ) {
        truncated = true;
        return;
      }
      const at = Buffer.concat([Buffer.from(base), raw]);
      let st: Awaited<ReturnType<typeof lstat>>;
      try {
        st = await lstat(at);
      } catch {
        continue; // removed meanwhile
      }
      const rel = `${inside === "/" ? "" : inside}/${layerName(raw)}`;
      pathChars += rel.length;
      const type = typeOf(st);
      snapshot.set(rel, {
        type,
        size: type === "file" ? st.size : 0,
        mtimeMs: st.mtimeMs,
        ino: st.ino,
      });
      if (type !== "dir") continue;
      if (depth >= MAX_WALK_DEPTH) {
        truncated = true;
        continue;
      }
      let child: Awaited<ReturnType<typeof open>>;
      try {
        child = await open(at, DIR_FLAGS);
      } catch {
        continue; // swapped for a link or removed: not followed
      }
      try {
        await walk(child, rel, depth + 1);
      } finally {
        await child.close();
      }
    }
  };
  try {
    await walk(root, "/", 0);
  } finally {
    await root.close();
  }
  return { snapshot, truncated };
}

/**
 * The changes from one snapshot to the next, sorted by path. Directories count only when
 * created or deleted (their times change with every file in them). A whiteout is the
 * deletion of an image file.
 */
export function diffSnapshots(before: LayerSnapshot, after: LayerSnapshot): FileChange[] {
  const changes: FileChange[] = [];
  for (const [p, e] of after) {
    const old = before.get(p);
    if (e.type === "whiteout") {
      if (old?.type !== "whiteout")
        changes.push({ path: p, change: "deleted", type: old?.type ?? "file", size: 0 });
      continue;
    }
    if (!old || old.type === "whiteout")
      changes.push({ path: p, change: "created", type: e.type, size: e.size });
    else if (old.type !== e.type)
      changes.push({ path: p, change: "modified", type: e.type, size: e.size });
    else if (
      e.type !== "dir" &&
      (old.size !== e.size || old.mtimeMs !== e.mtimeMs || old.ino !== e.ino)
    )
      changes.push({ path: p, change: "modified", type: e.type, size: e.size });
  }
  for (const [p, e] of before) {
    if (!after.has(p) && e.type !== "whiteout")
      changes.push({ path: p, change: "deleted", type: e.type, size: 0 });
  }
  return changes.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/**
 * Whether `inside` (an absolute path) exists in the image, looked up one component at a
 * time with O_NOFOLLOW from the image's root, so that a symlink in an imported image
 * cannot make the host look outside it. Returns the entry's type, or null.
 */
export async function lowerType(rootfs: string, inside: string): Promise<LayerEntryType | null> {
  const parts = inside.split("/").filter((p) => p !== "");
  if (parts.length === 0) return "dir";
  const flags = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
  let dir: Awaited<ReturnType<typeof open>>;
  try {
    dir = await open(rootfs, flags);
  } catch {
    return null;
  }
  try {
    for (const part of parts.slice(0, -1)) {
      const next = await open(`/proc/self/fd/${dir.fd}/${part}`, flags).catch(() => null);
      await dir.close();
      if (!next) return null;
      dir = next;
    }
    const st = await lstat(`/proc/self/fd/${dir.fd}/${parts.at(-1)}`).catch(() => null);
    return st ? typeOf(st) : null;
  } finally {
    await dir.close().catch(() => undefined);
  }
}

/**
 * A path new to the writable layer may be a copy-up of an image entry: a file of the image
 * written for the first time is modified, not created; a directory copied up only to hold
 * a change is no change at all.
 */
export async function classifyCopyUps(
  rootfs: string,
  changes: FileChange[],
): Promise<FileChange[]> {
  const out: FileChange[] = [];
  for (const c of changes) {
    if (c.change !== "created") {
      out.push(c);
      continue;
    }
    const lower = await lowerType(rootfs, c.path);
    if (lower === null) out.push(c);
    else if (c.type === "dir" && lower === "dir") continue;
    else out.push({ ...c, change: "modified" });
  }
  return out;
}
