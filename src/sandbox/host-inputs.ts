/**
 * Host files copied into a sandbox (`corral run --in`, `--db`) and its working directory
 * made, before the container starts: written through the sandbox's overlay root, so they
 * land in its writable layer (counted against its disk limit) and the image's directories
 * are copied up with their own modes and owners.
 *
 * Host code may not follow paths inside a live sandbox's root, but this runs before any
 * process exists in it: the tree is the image plus an empty layer, and nothing changes it
 * meanwhile. The image is still untrusted (an imported one especially), so every
 * component is checked with lstat: a symbolic link on the way to a destination is
 * refused, never followed, and files are opened with O_NOFOLLOW.
 *
 * Everything copied belongs to root inside the sandbox (the code runs as root there and
 * may change it); modes are kept without setuid/setgid; symbolic links inside a copied
 * directory are copied as links, their targets verbatim (they resolve inside the sandbox).
 */
import { createHash } from "node:crypto";
import { constants, type Stats } from "node:fs";
import {
  chmod,
  lchown,
  lstat,
  lutimes,
  mkdir,
  open,
  readdir,
  readlink,
  stat,
  symlink,
} from "node:fs/promises";
import path from "node:path";
import { CorralError } from "../core/errors.js";
import type { HostInput } from "../core/run-options.js";

/** A regular file copied in: where it is in the sandbox, and what it holds. */
export interface CopiedFile {
  path: string;
  sha256: string;
}

function invalid(message: string): CorralError {
  return new CorralError("invalid_argument", message);
}

function errno(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
}

async function lstatOrNull(p: string): Promise<Stats | null> {
  try {
    return await lstat(p);
  } catch (err) {
    if (errno(err) === "ENOENT") return null;
    throw err;
  }
}

/** Check that a host input can be read (before any sandbox exists, for a prompt error). */
export async function checkHostInput(input: HostInput, what: string): Promise<void> {
  let st: Stats;
  try {
    st = await stat(input.source);
  } catch (err) {
    throw invalid(`${what}: cannot read ${input.source}: ${errno(err)}`);
  }
  if (!st.isFile() && !st.isDirectory()) {
    throw invalid(`${what}: ${input.source} is not a regular file or a directory`);
  }
}

class RootWriter {
  readonly copied: CopiedFile[] = [];

  constructor(
    private readonly rootfs: string,
    private readonly uid: number,
  ) {}

  private host(inside: string): string {
    return path.join(this.rootfs, inside);
  }

  /**
   * Make the directories of `inside` (an absolute sandbox path) up to and including
   * `upTo` components, creating missing ones (0755, root). A symbolic link on the way is
   * refused when `onSymlink` is "refuse"; with "stop" the walk ends there (what follows
   * must then exist: it is resolved inside the sandbox, later, by the kernel).
   */
  async makeDirs(inside: string, onSymlink: "refuse" | "stop", what: string): Promise<boolean> {
    const parts = inside.split("/").filter(Boolean);
    let current = "";
    for (const part of parts) {
      current = `${current}/${part}`;
      const st = await lstatOrNull(this.host(current));
      if (st === null) {
        await mkdir(this.host(current), { mode: 0o755 });
        await chmod(this.host(current), 0o755);
        await lchown(this.host(current), this.uid, this.uid);
        continue;
      }
      if (st.isSymbolicLink()) {
        if (onSymlink === "stop") return false;
        throw invalid(
          `${what}: ${current} is a symbolic link in the image; give the path it points to`,
        );
      }
      if (!st.isDirectory()) throw invalid(`${what}: ${current} is not a directory in the image`);
    }
    return true;
  }

  /** `follow`: the user's own path may be a link; files found inside a copied directory may not. */
  async copyFile(
    source: string,
    sourceStat: Stats,
    inside: string,
    what: string,
    follow = false,
  ): Promise<void> {
    const dest = this.host(inside);
    const existing = await lstatOrNull(dest);
    if (existing?.isDirectory()) throw invalid(`${what}: ${inside} is a directory in the image`);
    const src = await open(source, constants.O_RDONLY | (follow ? 0 : constants.O_NOFOLLOW));
    let out: Awaited<ReturnType<typeof open>> | null = null;
    try {
      try {
        out = await open(
          dest,
          constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW,
          0o600,
        );
      } catch (err) {
        if (errno(err) === "ELOOP") {
          throw invalid(`${what}: ${inside} is a symbolic link in the image; it is not replaced`);
        }
        throw err;
      }
      const hash = createHash("sha256");
      const buf = Buffer.allocUnsafe(1 << 20);
      for (;;) {
        const { bytesRead } = await src.read(buf, 0, buf.length, null);
        if (bytesRead === 0) break;
        hash.update(buf.subarray(0, bytesRead));
        await out.write(buf, 0, bytesRead);
      }
      await out.chown(this.uid, this.uid);
      await out.chmod(sourceStat.mode & 0o1777);
      await out.utimes(sourceStat.atime, sourceStat.mtime);
      this.copied.push({ path: inside, sha256: hash.digest("hex") });
    } finally {
      await out?.close();
      await src.close();
    }
  }

  /** Copy a host directory's contents into `inside` (which exists), recursively. */
  async copyDir(source: string, sourceStat: Stats, inside: string, what: string): Promise<void> {
    const dest = this.host(inside);
    await chmod(dest, sourceStat.mode & 0o1777);
    for (const name of (await readdir(source)).sort()) {
      const from = path.join(source, name);
      const to = inside === "/" ? `/${name}` : `${inside}/${name}`;
      const st = await lstat(from);
      const existing = await lstatOrNull(this.host(to));
      if (st.isDirectory()) {
        if (existing === null) {
          await mkdir(this.host(to), { mode: 0o700 });
          await lchown(this.host(to), this.uid, this.uid);
        } else if (existing.isSymbolicLink() || !existing.isDirectory()) {
          throw invalid(`${what}: ${to} is not a directory in the image`);
        }
        await this.copyDir(from, st, to, what);
      } else if (st.isFile()) {
        await this.copyFile(from, st, to, what);
      } else if (st.isSymbolicLink()) {
        if (existing !== null) throw invalid(`${what}: ${to} already exists in the image`);
        await symlink(await readlink(from), this.host(to));
        await lchown(this.host(to), this.uid, this.uid);
        await lutimes(this.host(to), st.atime, st.mtime);
      } else {
        throw invalid(
          `${what}: ${from} is not a file, directory or symbolic link; only those are copied`,
        );
      }
    }
  }
}

/**
 * Copy `inputs` into the sandbox root at `rootfs` (the overlay, before the container
 * starts) and make `workdir` if it is missing. Returns the regular files copied.
 */
export async function copyHostInputs(
  rootfs: string,
  inputs: readonly HostInput[],
  options: { rootUid: number; workdir?: string },
): Promise<CopiedFile[]> {
  const writer = new RootWriter(rootfs, options.rootUid);
  for (const input of inputs) {
    const what = `--in ${input.source}`;
    try {
      const st = await stat(input.source);
      if (st.isDirectory()) {
        await writer.makeDirs(input.dest, "refuse", what);
        await writer.copyDir(input.source, st, input.dest, what);
      } else if (st.isFile()) {
        await writer.makeDirs(path.posix.dirname(input.dest), "refuse", what);
        await writer.copyFile(input.source, st, input.dest, what, true);
      } else {
        throw invalid(`${what}: not a regular file or a directory`);
      }
    } catch (err) {
      if (err instanceof CorralError) throw err;
      const code = errno(err);
      if (code === "ENOSPC" || code === "EDQUOT") {
        throw invalid(
          `${what}: no space left on the sandbox's writable layer (raise --disk or --inodes)`,
        );
      }
      throw invalid(`${what}: copying into the sandbox failed: ${code}`);
    }
  }
  if (options.workdir !== undefined) {
    await writer.makeDirs(options.workdir, "stop", "--workdir");
  }
  return writer.copied;
}
