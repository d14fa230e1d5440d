/**
 * The content digest of a root filesystem: `sha256:` + the sha256 of its manifest, one
 * line per entry sorted by path, naming what a sandbox can observe of it (type, mode,
 * owner, size, content, link target, device numbers) and nothing it cannot (times, inode
 * numbers, directory sizes). Owners are recorded as the ids seen inside the sandbox, so the
 * digest does not depend on the host id range the tree was shifted to.
 *
 * Also home of `walkTree`, the bounded-concurrency lstat walk that `shift` uses too.
 */
import { createHash } from "node:crypto";
import { createReadStream, type Stats } from "node:fs";
import { lstat, readdir, readFile, readlink } from "node:fs/promises";
import path from "node:path";

/** Run at most `n` tasks at a time. */
export function createLimiter(n: number): <T>(task: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: (() => void)[] = [];
  return async <T>(task: () => Promise<T>): Promise<T> => {
    if (active >= n) await new Promise<void>((resolve) => waiting.push(resolve));
    active++;
    try {
      return await task();
    } finally {
      active--;
      waiting.shift()?.();
    }
  };
}

/**
 * Visit every entry of the tree at `root` (the root itself first, as "/"), with its lstat:
 * symbolic links are reported, never followed. A directory is visited before its entries.
 * At most `concurrency` lstat+visit steps run at once. Paths are absolute inside the tree.
 */
export async function walkTree(
  root: string,
  visit: (relPath: string, stats: Stats, absPath: string) => Promise<void> | void,
  options: { concurrency?: number } = {},
): Promise<void> {
  const limit = createLimiter(options.concurrency ?? 32);
  const rootStats = await lstat(root);
  await visit("/", rootStats, root);
  if (!rootStats.isDirectory()) return;

  const walkDir = async (abs: string, rel: string): Promise<void> => {
    const names = await limit(() => readdir(abs));
    await Promise.all(
      names.map(async (name) => {
        const childAbs = path.join(abs, name);
        const childRel = rel === "/" ? `/${name}` : `${rel}/${name}`;
        const stats = await limit(async () => {
          const s = await lstat(childAbs);
          await visit(childRel, s, childAbs);
          return s;
        });
        if (stats.isDirectory()) await walkDir(childAbs, childRel);
      }),
    );
  };
  await walkDir(root, "/");
}

export function entryType(stats: Stats): "f" | "d" | "l" | "c" | "b" | "p" | "s" {
  if (stats.isFile()) return "f";
  if (stats.isDirectory()) return "d";
  if (stats.isSymbolicLink()) return "l";
  if (stats.isCharacterDevice()) return "c";
  if (stats.isBlockDevice()) return "b";
  if (stats.isFIFO()) return "p";
  return "s";
}

/** Linux's dev_t split (glibc's gnu_dev_major/minor), for numbers below 2^53. */
export function deviceNumbers(rdev: number): { major: number; minor: number } {
  const high = Math.floor(rdev / 2 ** 32);
  const low = rdev >>> 0;
  return {
    major: (((low >>> 8) & 0xfff) | (high & 0xfffff000)) >>> 0,
    minor: ((low & 0xff) | ((low >>> 12) & 0xfff00)) + (high & 0xfff) * 2 ** 20,
  };
}

const SMALL_FILE = 256 * 1024;

async function hashFile(abs: string, size: number): Promise<string> {
  const hash = createHash("sha256");
  if (size <= SMALL_FILE) {
    hash.update(await readFile(abs));
  } else {
    for await (const chunk of createReadStream(abs, { highWaterMark: 1024 * 1024 })) {
      hash.update(chunk as Buffer);
    }
  }
  return hash.digest("hex");
}

/** One manifest line (without the newline). Exported for tests and for debugging a digest. */
export function manifestLine(
  relPath: string,
  stats: Pick<Stats, "mode" | "uid" | "gid" | "size" | "rdev"> & {
    type: ReturnType<typeof entryType>;
  },
  extra: { sha256?: string; target?: string },
  idBase = 0,
): string {
  const id = (n: number): number => (idBase > 0 && n >= idBase ? n - idBase : n);
  const mode = (stats.mode & 0o7777).toString(8).padStart(4, "0");
  let size = 0;
  let detail = "-";
  if (stats.type === "f") {
    size = stats.size;
    detail = extra.sha256 ?? "-";
  } else if (stats.type === "l") {
    size = Buffer.byteLength(extra.target ?? "");
    detail = JSON.stringify(extra.target ?? "");
  } else if (stats.type === "c" || stats.type === "b") {
    const { major, minor } = deviceNumbers(stats.rdev);
    detail = `${major},${minor}`;
  }
  return [
    JSON.stringify(relPath),
    stats.type,
    mode,
    id(stats.uid),
    id(stats.gid),
    size,
    detail,
  ].join(" ");
}

export interface TreeDigest {
  /** `sha256:` + 64 hex digits. */
  digest: string;
  /** Entries in the tree, the root included. */
  files: number;
  /** Disk space used (allocated blocks, each hard-linked inode counted once). */
  sizeBytes: number;
}

/**
 * Digest the tree at `root`. `idBase`: the host id that is 0 inside the sandbox (ids at or
 * above it are recorded relative to it). `onProgress` gets entries done and, when given,
 * `expectedEntries` (from a previous walk) to make a fraction of.
 */
export async function digestTree(
  root: string,
  options: {
    idBase?: number;
    concurrency?: number;
    expectedEntries?: number;
    onProgress?: (fraction: number) => void;
  } = {},
): Promise<TreeDigest> {
  const lines: [string, string][] = [];
  const seenInodes = new Set<string>();
  let sizeBytes = 0;
  let done = 0;
  await walkTree(
    root,
    async (rel, stats, abs) => {
      const type = entryType(stats);
      const extra: { sha256?: string; target?: string } = {};
      if (type === "f") extra.sha256 = await hashFile(abs, stats.size);
      else if (type === "l") extra.target = await readlink(abs);
      lines.push([rel, manifestLine(rel, { ...stats, type }, extra, options.idBase ?? 0)]);
      const inode = `${stats.dev}:${stats.ino}`;
      if (stats.nlink <= 1 || type === "d" || !seenInodes.has(inode)) {
        if (stats.nlink > 1 && type !== "d") seenInodes.add(inode);
        sizeBytes += stats.blocks * 512;
      }
      done++;
      if (options.onProgress && done % 500 === 0) {
        const expected = options.expectedEntries ?? 0;
        options.onProgress(expected > 0 ? Math.min(0.99, done / expected) : 0);
      }
    },
    { concurrency: options.concurrency ?? 16 },
  );
  // Sort by path, in code-unit order: the same for every run whatever the walk's order.
  lines.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const hash = createHash("sha256");
  for (const [, line] of lines) hash.update(`${line}\n`);
  options.onProgress?.(1);
  return { digest: `sha256:${hash.digest("hex")}`, files: lines.length, sizeBytes };
}
