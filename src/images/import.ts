/**
 * `corral image import`: a root filesystem tarball, a `docker save` archive or an OCI
 * image layout archive becomes an image of the cache, exactly like a built one: unpacked
 * into a staging directory of the cache, shifted to the sandboxes' ids, digested, and
 * published by one atomic rename. Layers are applied in order with OCI whiteouts.
 *
 * The archive is hostile until proven otherwise. Each entry is first judged by the pure
 * `decideTarEntry` (import-policy.ts); then, writing, every parent directory is checked
 * with lstat, so nothing is ever written, linked or deleted through a symbolic link that
 * an earlier entry put in the tree, and files are created with O_EXCL|O_NOFOLLOW. A
 * refusal stops the import and removes the staging directory: nothing is left behind.
 *
 * The image's key is derived from the archive's sha256, so importing the same file again
 * is instant (a cache hit that only sets the name).
 */
import { createHash, type Hash, randomBytes } from "node:crypto";
import { constants, createReadStream, createWriteStream, type Stats } from "node:fs";
import {
  chmod,
  lchown,
  link,
  lstat,
  lutimes,
  mkdir,
  open,
  readdir,
  rename,
  rm,
  stat,
  symlink,
  utimes,
} from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import { CorralError, escapeUntrusted, quoteUntrusted } from "../core/errors.js";
import { formatBytes, GiB } from "../core/limits.js";
import {
  type ArchiveFormat,
  blobMember,
  configDiffIds,
  defaultEnv,
  detectArchiveFormat,
  type ImageConfigInfo,
  isIndexDescriptor,
  type LayerRef,
  NO_PROCESS,
  ociArchitecture,
  ociReference,
  parseDockerManifest,
  parseImageConfig,
  parseOciManifest,
  pickFromIndex,
  withDiffIds,
} from "./archive-format.js";
import { publishName, removeLeftovers } from "./build.js";
import { digestTree } from "./digest.js";
import {
  decideTarEntry,
  type EntryDecision,
  normaliseArchivePath,
  parentsOf,
} from "./import-policy.js";
import { shortKey } from "./recipe.js";
import { shiftTree } from "./shift.js";
import {
  canonicalImageName,
  ensureImageDir,
  IMAGE_NAME,
  IMAGE_NAME_RULE,
  type ImageMeta,
  imageInUse,
  imageNameFromReference,
  imagePaths,
  META_VERSION,
  readImageMeta,
  removeCacheDir,
  type StoredImage,
  takeImageLock,
  writeImageMeta,
} from "./store.js";
import { readTar, TarFormatError } from "./tar.js";

/** Unpacked size above which an import is refused (a gzip bomb must not fill the host's disk). */
export const DEFAULT_IMPORT_MAX_BYTES = 64 * GiB;
/** Entries above which an import is refused (an inode bomb likewise). */
export const MAX_IMPORT_ENTRIES = 4_000_000;

export interface ImportOptions {
  file: string;
  /** The image's name; by default derived from the file's name. */
  name?: string;
  imageDir: string;
  uidBase: number;
  maxBytes?: number;
  onProgress?: (step: string) => void;
}

export interface ImportStats {
  format: ArchiveFormat;
  layers: number;
  entries: number;
  /** Files and directories whose setuid/setgid bits were stripped. */
  strippedSpecialBits: number;
  /** Entries not imported: FIFOs and aufs metadata (never the archive's "./" root entry). */
  skipped: number;
  skippedFifos: number;
  skippedAufsMetadata: number;
}

export interface ImportResult extends StoredImage {
  cached: boolean;
  stats: ImportStats | null;
}

/** A refusal: the one-line reason names the archive, the layer and the entry. */
class Refusal extends CorralError {
  constructor(message: string) {
    super("invalid_argument", message);
  }
}

/** "ubuntu-22.04.tar.gz" → "ubuntu-22.04"; null when nothing usable is left. */
export function imageNameFromFile(file: string): string | null {
  const base = path
    .basename(file)
    .replace(/\.(tar\.gz|tgz|tar|gz)$/i, "")
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, "-")
    .replace(/^[^a-z0-9]+/, "")
    .slice(0, 63);
  return IMAGE_NAME.test(base) ? base : null;
}

/**
 * The name an archive gives its image, when `--name` does not: a `docker save` archive's
 * first RepoTag, or an OCI index's reference (a bare OCI tag goes after the file's name:
 * "x.tar" with ref.name "1.0" is "x:1.0"); null when it gives none that is a valid name.
 */
export function archiveImageName(
  given: { repoTags?: readonly string[]; oci?: ReturnType<typeof ociReference> },
  file: string,
): string | null {
  const tag = given.repoTags?.[0];
  if (tag !== undefined) return imageNameFromReference(tag);
  if (!given.oci) return null;
  if (given.oci.kind === "reference") return imageNameFromReference(given.oci.value);
  const base = imageNameFromFile(file);
  return base === null ? null : imageNameFromReference(`${base}:${given.oci.value}`);
}

// ------------------------------------------------------------------ the archive's members

interface FileMember {
  kind: "file";
  offset: number;
  size: number;
}
type Member = FileMember | { kind: "link"; target: string } | { kind: "other" };

/** Index the members of the (uncompressed) outer tar: name → where its bytes are. */
async function indexArchive(tarFile: string): Promise<Map<string, Member>> {
  const members = new Map<string, Member>();
  for await (const entry of readTar(createReadStream(tarFile, { highWaterMark: 1 << 20 }))) {
    const h = entry.header;
    const p = normaliseArchivePath(h.name);
    if (!p.ok || p.path === "") continue; // not addressable by a manifest: never read
    if (h.type === "file")
      members.set(p.path, { kind: "file", offset: entry.dataOffset, size: h.size });
    else if (h.type === "symlink") {
      // docker save links identical layers: resolve relative to the member's directory
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(p.path), h.linkname));
      members.set(p.path, { kind: "link", target });
    } else if (h.type === "hardlink") members.set(p.path, { kind: "link", target: h.linkname });
    else members.set(p.path, { kind: "other" });
  }
  return members;
}

function findMember(members: Map<string, Member>, name: string): FileMember {
  let current = name;
  for (let hops = 0; hops < 8; hops++) {
    const p = normaliseArchivePath(current);
    const m = p.ok ? members.get(p.path) : undefined;
    if (!m) throw new Refusal(`the archive has no member ${quoteUntrusted(name)}`);
    if (m.kind === "file") return m;
    if (m.kind === "other")
      throw new Refusal(`archive member ${quoteUntrusted(name)} is not a file`);
    current = m.target;
  }
  throw new Refusal(`archive member ${quoteUntrusted(name)} is a loop of links`);
}

function memberStream(tarFile: string, m: FileMember): AsyncIterable<Buffer> {
  if (m.size === 0) return Readable.from([]);
  return createReadStream(tarFile, {
    start: m.offset,
    end: m.offset + m.size - 1,
    highWaterMark: 1 << 20,
  });
}

const MAX_JSON = 4 * 1024 * 1024;

async function readMemberJson(
  tarFile: string,
  members: Map<string, Member>,
  name: string,
): Promise<unknown> {
  const m = findMember(members, name);
  if (m.size > MAX_JSON)
    throw new Refusal(`archive member ${quoteUntrusted(name)} is too large for a JSON file`);
  const chunks: Buffer[] = [];
  for await (const c of memberStream(tarFile, m)) chunks.push(c);
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new Refusal(`archive member ${quoteUntrusted(name)} is not valid JSON`);
  }
}

/** The layers of the archive, in order, and what its config says. */
async function planLayers(
  tarFile: string,
  members: Map<string, Member>,
  file: string,
): Promise<{
  format: ArchiveFormat;
  layers: LayerRef[];
  config: ImageConfigInfo;
  /** The name the archive gives its image (see archiveImageName). */
  name: string | null;
}> {
  const format = detectArchiveFormat(new Set(members.keys()));
  if (format === "rootfs") {
    const config = { env: defaultEnv(), ...NO_PROCESS };
    return { format, layers: [{ member: "" }], config, name: null };
  }
  if (format === "docker-save") {
    const manifest = parseDockerManifest(await readMemberJson(tarFile, members, "manifest.json"));
    const configJson = await readMemberJson(tarFile, members, manifest.config);
    return {
      format,
      layers: withDiffIds(manifest.layers, configDiffIds(configJson)),
      config: parseImageConfig(configJson),
      name: archiveImageName({ repoTags: manifest.repoTags }, file),
    };
  }
  let descriptor = pickFromIndex(
    await readMemberJson(tarFile, members, "index.json"),
    ociArchitecture(process.arch),
  );
  const name = archiveImageName({ oci: ociReference(descriptor) }, file);
  for (let depth = 0; isIndexDescriptor(descriptor); depth++) {
    if (depth >= 4) throw new Refusal("the OCI index nests too deeply");
    descriptor = pickFromIndex(
      await readMemberJson(tarFile, members, blobMember(descriptor)),
      ociArchitecture(process.arch),
    );
  }
  const manifest = parseOciManifest(await readMemberJson(tarFile, members, blobMember(descriptor)));
  const configJson = await readMemberJson(tarFile, members, blobMember(manifest.config));
  return {
    format,
    layers: withDiffIds(manifest.layers, configDiffIds(configJson)),
    config: parseImageConfig(configJson),
    name,
  };
}

// ------------------------------------------------------------------ streams

async function* hashing(source: AsyncIterable<Buffer>, hash: Hash): AsyncGenerator<Buffer> {
  for await (const chunk of source) {
    hash.update(chunk);
    yield chunk;
  }
}

/** Sniff the first bytes: gunzip gzip, refuse other compressions, pass tar through. */
async function* decompressed(source: AsyncIterable<Buffer>, what: string): AsyncGenerator<Buffer> {
  const it = source[Symbol.asyncIterator]();
  let head = Buffer.alloc(0);
  let ended = false;
  while (head.length < 6 && !ended) {
    const r = await it.next();
    if (r.done) ended = true;
    else head = Buffer.concat([head, r.value]);
  }
  const rest = async function* (): AsyncGenerator<Buffer> {
    try {
      if (head.length > 0) yield head;
      if (ended) return;
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        yield r.value;
      }
    } finally {
      // Stopped early (a refusal): close the source too.
      if (!ended) await it.return?.();
    }
  };
  const compression = sniffCompression(head);
  if (compression === "gzip") {
    const gunzip = createGunzip();
    const done = pipeline(Readable.from(rest()), gunzip).catch((err: unknown) => {
      gunzip.destroy(err as Error);
    });
    try {
      for await (const chunk of gunzip) yield chunk as Buffer;
    } catch (err) {
      throw new Refusal(`${what} is not valid gzip: ${(err as Error).message}`);
    } finally {
      gunzip.destroy();
      await done;
    }
    return;
  }
  if (compression !== "none") {
    await it.return?.();
    throw new Refusal(`${what} is ${compression}-compressed; only gzip is supported`);
  }
  yield* rest();
}

/** The compression a stream's first bytes announce. */
export function sniffCompression(head: Buffer): "gzip" | "zstd" | "xz" | "bzip2" | "none" {
  const magic = (bytes: number[]) => bytes.every((b, i) => head[i] === b);
  if (magic([0x1f, 0x8b])) return "gzip";
  if (magic([0x28, 0xb5, 0x2f, 0xfd])) return "zstd";
  if (magic([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])) return "xz";
  if (magic([0x42, 0x5a, 0x68])) return "bzip2";
  return "none";
}

// ------------------------------------------------------------------ the tree

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

async function lstatOrNull(p: string): Promise<Stats | null> {
  try {
    return await lstat(p);
  } catch (err) {
    if (errno(err) === "ENOENT") return null;
    throw err;
  }
}

/**
 * The tree being built, one layer after another. Paths are relative to `root`, already
 * normalised by the policy (no "..", not absolute): `abs` only joins.
 */
class LayerTree {
  /** Paths the current layer wrote, and their ancestors: a whiteout never hides those. */
  private written = new Set<string>();
  private above = new Set<string>();
  entries = 0;
  bytes = 0;
  stripped = 0;
  skippedFifos = 0;
  skippedAufsMetadata = 0;

  constructor(
    readonly root: string,
    private readonly maxBytes: number,
  ) {}

  startLayer(): void {
    this.written.clear();
    this.above.clear();
  }

  private abs(rel: string): string {
    return rel === "" ? this.root : path.join(this.root, rel);
  }

  private mark(rel: string): void {
    this.written.add(rel);
    for (const p of parentsOf(rel)) this.above.add(p);
  }

  /**
   * Check every directory above `rel` with lstat: a symbolic link there is refused (the
   * write would land wherever it points). Missing directories are created (0755, root)
   * when `create`; otherwise the answer is false.
   */
  private async parents(rel: string, create: boolean): Promise<boolean> {
    for (const dir of parentsOf(rel)) {
      const st = await lstatOrNull(this.abs(dir));
      if (st === null) {
        if (!create) return false;
        await mkdir(this.abs(dir), { mode: 0o755 });
        await chmod(this.abs(dir), 0o755);
        continue;
      }
      if (st.isSymbolicLink()) {
        throw new Refusal(
          `${escapeUntrusted(dir)} is a symbolic link in the image: nothing may be written through it`,
        );
      }
      if (!st.isDirectory()) {
        if (!create) return false;
        throw new Refusal(`${escapeUntrusted(dir)} is not a directory in the image`);
      }
    }
    return true;
  }

  /** Remove whatever is at `rel` (a directory with all it holds; links are not followed). */
  private async remove(rel: string): Promise<void> {
    await rm(this.abs(rel), { recursive: true, force: true });
  }

  /** Delete everything under `rel` that the current layer did not write. */
  private async clearLower(rel: string): Promise<void> {
    for (const name of await readdir(this.abs(rel))) {
      const child = rel === "" ? name : `${rel}/${name}`;
      if (this.written.has(child) || this.above.has(child)) {
        const st = await lstat(this.abs(child));
        if (st.isDirectory()) await this.clearLower(child);
      } else {
        await this.remove(child);
      }
    }
  }

  private countEntry(): void {
    if (++this.entries > MAX_IMPORT_ENTRIES) {
      throw new Refusal(`the image has more than ${MAX_IMPORT_ENTRIES} entries`);
    }
  }

  async apply(d: EntryDecision, body: AsyncIterable<Buffer>): Promise<void> {
    switch (d.kind) {
      case "refuse":
        throw new Refusal(d.reason);
      case "root":
        return;
      case "skip":
        if (d.what === "fifo") this.skippedFifos++;
        else this.skippedAufsMetadata++;
        return;
      case "whiteout": {
        if (!(await this.parents(d.path, false))) return;
        if (this.written.has(d.path) || this.above.has(d.path)) {
          // The current layer wrote it: a whiteout hides only what lies below.
          const st = await lstat(this.abs(d.path));
          if (st.isDirectory()) await this.clearLower(d.path);
          return;
        }
        await this.remove(d.path);
        return;
      }
      case "opaque": {
        if (d.dir !== "") {
          if (!(await this.parents(d.dir, false))) return;
          const st = await lstatOrNull(this.abs(d.dir));
          if (st === null) return;
          if (st.isSymbolicLink()) {
            throw new Refusal(
              `${escapeUntrusted(d.dir)} is a symbolic link in the image: it cannot be made opaque`,
            );
          }
          if (!st.isDirectory()) return;
        }
        await this.clearLower(d.dir);
        return;
      }
      case "dir": {
        this.countEntry();
        await this.parents(d.path, true);
        const abs = this.abs(d.path);
        const existing = await lstatOrNull(abs);
        if (existing && !existing.isDirectory()) await this.remove(d.path);
        if (!existing?.isDirectory()) await mkdir(abs, { mode: 0o700 });
        await lchown(abs, d.uid, d.gid);
        await chmod(abs, d.mode);
        await utimes(abs, d.mtime, d.mtime);
        if (d.strippedBits) this.stripped++;
        this.mark(d.path);
        return;
      }
      case "file": {
        this.countEntry();
        await this.parents(d.path, true);
        const abs = this.abs(d.path);
        if (await lstatOrNull(abs)) await this.remove(d.path);
        if (this.bytes + d.size > this.maxBytes) {
          throw new Refusal(`the image unpacks to more than ${formatBytes(this.maxBytes)}`);
        }
        const fh = await open(
          abs,
          constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
          0o600,
        );
        try {
          for await (const chunk of body) await fh.write(chunk);
          await fh.chown(d.uid, d.gid);
          await fh.chmod(d.mode);
          await fh.utimes(d.mtime, d.mtime);
        } finally {
          await fh.close();
        }
        this.bytes += d.size;
        if (d.strippedBits) this.stripped++;
        this.mark(d.path);
        return;
      }
      case "symlink": {
        this.countEntry();
        await this.parents(d.path, true);
        const abs = this.abs(d.path);
        if (await lstatOrNull(abs)) await this.remove(d.path);
        await symlink(d.target, abs);
        await lchown(abs, d.uid, d.gid);
        await lutimes(abs, d.mtime, d.mtime);
        this.mark(d.path);
        return;
      }
      case "hardlink": {
        this.countEntry();
        if (!(await this.parents(d.target, false))) {
          throw new Refusal(
            `its hard link target ${escapeUntrusted(d.target)} is not in the image`,
          );
        }
        const target = await lstatOrNull(this.abs(d.target));
        if (target === null)
          throw new Refusal(
            `its hard link target ${escapeUntrusted(d.target)} is not in the image`,
          );
        if (target.isDirectory())
          throw new Refusal(`its hard link target ${escapeUntrusted(d.target)} is a directory`);
        await this.parents(d.path, true);
        const abs = this.abs(d.path);
        const existing = await lstatOrNull(abs);
        if (existing && existing.ino === target.ino && existing.dev === target.dev) {
          this.mark(d.path);
          return;
        }
        if (existing) await this.remove(d.path);
        await link(this.abs(d.target), abs);
        this.mark(d.path);
        return;
      }
    }
  }
}

/** Apply one layer (a tar stream) to the tree, checking its digests as it streams. */
async function applyLayer(
  tree: LayerTree,
  raw: AsyncIterable<Buffer>,
  layer: LayerRef,
  what: string,
): Promise<void> {
  const storedHash = createHash("sha256");
  const diffHash = createHash("sha256");
  tree.startLayer();
  const tarStream = hashing(decompressed(hashing(raw, storedHash), what), diffHash);
  try {
    for await (const entry of readTar(tarStream)) {
      const decision = decideTarEntry(entry.header);
      try {
        await tree.apply(decision, entry.body);
      } catch (err) {
        if (err instanceof TarFormatError) throw err;
        const reason =
          err instanceof CorralError
            ? err.message
            : `${errno(err) ?? "error"}: ${escapeUntrusted((err as Error).message)}`;
        const where = what === "the archive" ? "entry" : `${what} entry`;
        throw new Refusal(`${where} ${quoteUntrusted(entry.header.name)}: ${reason}`);
      }
    }
  } catch (err) {
    if (err instanceof TarFormatError)
      throw new Refusal(`${what} is not a valid tar archive: ${err.message}`);
    throw err;
  }
  if (layer.storedSha256 && storedHash.digest("hex") !== layer.storedSha256) {
    throw new Refusal(`${what} does not match its digest sha256:${layer.storedSha256}`);
  }
  if (layer.diffSha256 && diffHash.digest("hex") !== layer.diffSha256) {
    throw new Refusal(`${what} does not match its diff id sha256:${layer.diffSha256}`);
  }
}

// ------------------------------------------------------------------ the import

async function sha256OfFile(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 }))
    hash.update(chunk as Buffer);
  return hash.digest("hex");
}

async function fileCompression(file: string): Promise<ReturnType<typeof sniffCompression>> {
  const fh = await open(file, "r");
  try {
    const b = Buffer.alloc(6);
    const { bytesRead } = await fh.read(b, 0, 6, 0);
    return sniffCompression(b.subarray(0, bytesRead));
  } finally {
    await fh.close();
  }
}

/** The key of an imported archive: as a recipe key is to a recipe. */
export function importKey(archiveSha256: string): string {
  return createHash("sha256").update(`corral-import-v1\0${archiveSha256}`).digest("hex");
}

async function cachedImport(
  imageDir: string,
  key: string,
  fullKey: string,
  uidBase: number,
): Promise<StoredImage | null> {
  const meta = await readImageMeta(imageDir, key);
  if (!meta || meta.recipeKey !== fullKey || meta.uidBase !== uidBase) return null;
  // An older Corral did not keep the config's Entrypoint, Cmd and WorkingDir or the
  // archive's name: import such an archive again (it replaces the old image).
  if (meta.process === undefined || meta.source?.archiveName === undefined) return null;
  const paths = imagePaths(imageDir, key);
  try {
    if (!(await stat(paths.rootfs)).isDirectory()) return null;
  } catch {
    return null;
  }
  return { meta, dir: paths.dir, rootfs: paths.rootfs, names: [] };
}

export async function importImage(options: ImportOptions): Promise<ImportResult> {
  const { file, imageDir, uidBase } = options;
  const given = options.name === undefined ? undefined : canonicalImageName(options.name);
  if (given !== undefined && !IMAGE_NAME.test(given)) {
    throw new CorralError(
      "invalid_argument",
      `"${options.name}" is not a valid image name: ${IMAGE_NAME_RULE}`,
    );
  }
  let st: Stats;
  try {
    st = await stat(file);
  } catch (err) {
    throw new CorralError(
      "not_found",
      `cannot read ${file}: ${errno(err) ?? (err as Error).message}`,
    );
  }
  if (!st.isFile()) throw new CorralError("invalid_argument", `${file} is not a regular file`);
  if (process.getuid?.() !== 0) {
    throw new CorralError(
      "prerequisite_missing",
      "importing an image needs root (chown to the sandbox ids)",
      "run it with sudo",
    );
  }

  options.onProgress?.("hashing the archive");
  const archiveSha256 = await sha256OfFile(file);
  const fullKey = importKey(archiveSha256);
  const key = shortKey(fullKey);
  // A cache hit is named as its first import was, unless --name says otherwise.
  const setName = async (image: StoredImage): Promise<StoredImage> => {
    const name = given ?? image.meta.source?.archiveName ?? imageNameFromFile(file);
    if (name === null) throw cannotName(file);
    return publishName(imageDir, { ...image, meta: { ...image.meta, name } });
  };

  const hit = await cachedImport(imageDir, key, fullKey, uidBase);
  if (hit) return { ...(await setName(hit)), cached: true, stats: null };

  await ensureImageDir(imageDir);
  const release = await takeImageLock(imageDir, key);
  try {
    const again = await cachedImport(imageDir, key, fullKey, uidBase);
    if (again) return { ...(await setName(again)), cached: true, stats: null };
    await removeLeftovers(imageDir, key);
    const { image, stats } = await importLocked(
      { ...options, ...(given !== undefined ? { name: given } : {}) },
      archiveSha256,
      fullKey,
      key,
    );
    return { ...(await publishName(imageDir, image)), cached: false, stats };
  } finally {
    await release();
  }
}

function cannotName(file: string): CorralError {
  return new CorralError(
    "invalid_argument",
    `cannot make an image name from ${path.basename(file)}: give --name NAME`,
  );
}

async function importLocked(
  options: ImportOptions,
  archiveSha256: string,
  fullKey: string,
  key: string,
): Promise<{ image: StoredImage; stats: ImportStats }> {
  const { file, imageDir, uidBase } = options;
  const started = Date.now();
  const progress = options.onProgress ?? (() => {});
  const tmp = path.join(imageDir, `.tmp-${key}-${randomBytes(4).toString("hex")}`);
  const rootfs = path.join(tmp, "rootfs");
  const maxBytes = options.maxBytes ?? DEFAULT_IMPORT_MAX_BYTES;
  await mkdir(tmp, { mode: 0o711 });
  await chmod(tmp, 0o711);
  try {
    await mkdir(rootfs, { mode: 0o755 });
    await chmod(rootfs, 0o755);
    // The outer archive must be seekable: a gzip-compressed one is unpacked first.
    let tarFile = file;
    const compression = await fileCompression(file);
    if (compression !== "none" && compression !== "gzip") {
      throw new Refusal(`the archive is ${compression}-compressed; only gzip is supported`);
    }
    if (compression === "gzip") {
      progress("decompressing the archive");
      tarFile = path.join(tmp, "archive.tar");
      let total = 0;
      const capped = async function* (source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
        for await (const chunk of source) {
          total += chunk.length;
          if (total > maxBytes)
            throw new Refusal(`the archive unpacks to more than ${formatBytes(maxBytes)}`);
          yield chunk;
        }
      };
      await pipeline(
        Readable.from(
          capped(decompressed(createReadStream(file, { highWaterMark: 1 << 20 }), "the archive")),
        ),
        createWriteStream(tarFile, { mode: 0o600 }),
      );
    }
    progress("reading the archive");
    let members: Map<string, Member>;
    try {
      members = await indexArchive(tarFile);
    } catch (err) {
      if (err instanceof TarFormatError) throw new Refusal(`not a tar archive: ${err.message}`);
      throw err;
    }
    const plan = await planLayers(tarFile, members, file);
    const name = options.name ?? plan.name ?? imageNameFromFile(file);
    if (name === null) throw cannotName(file);
    const tree = new LayerTree(rootfs, maxBytes);
    for (const [i, layer] of plan.layers.entries()) {
      const what =
        plan.format === "rootfs" ? "the archive" : `layer ${i + 1}/${plan.layers.length}`;
      progress(plan.format === "rootfs" ? "unpacking" : `unpacking ${what}`);
      const raw =
        layer.member === ""
          ? createReadStream(tarFile, { highWaterMark: 1 << 20 })
          : memberStream(tarFile, findMember(members, layer.member));
      await applyLayer(tree, raw, layer, what);
    }
    if (tarFile !== file) await rm(tarFile, { force: true });
    // Code runs in /work; an image made elsewhere rarely has it (the built recipe makes it too).
    if ((await lstatOrNull(path.join(rootfs, "work"))) === null) {
      await mkdir(path.join(rootfs, "work"), { mode: 0o755 });
      await chmod(path.join(rootfs, "work"), 0o755);
    }

    progress("shift");
    const shifted = await shiftTree(rootfs, uidBase);
    progress("digest");
    const digest = await digestTree(rootfs, { idBase: uidBase, expectedEntries: shifted.visited });
    const meta: ImageMeta = {
      version: META_VERSION,
      status: "complete",
      key,
      recipeKey: fullKey,
      name,
      digest: digest.digest,
      created: new Date().toISOString(),
      mirror: "",
      suite: "",
      architecture: plan.config.architecture ?? ociArchitecture(process.arch),
      packages: [],
      setup: [],
      env: plan.config.env,
      process: {
        entrypoint: plan.config.entrypoint,
        cmd: plan.config.cmd,
        workingDir: plan.config.workingDir,
      },
      uidBase,
      shifted: true,
      sizeBytes: digest.sizeBytes,
      files: digest.files,
      buildSeconds: Math.round((Date.now() - started) / 100) / 10,
      source: {
        kind: "import",
        file: path.basename(file),
        format: plan.format,
        archiveSha256,
        layers: plan.layers.length,
        archiveName: plan.name,
      },
    };
    await writeImageMeta(path.join(tmp, "meta.json"), meta);
    const paths = imagePaths(imageDir, key);
    let old: string | null = null;
    if ((await lstatOrNull(paths.dir)) !== null) {
      // An import of this archive for another uid base: replace it.
      old = path.join(imageDir, `.old-${key}-${randomBytes(4).toString("hex")}`);
      await rename(paths.dir, old);
    }
    await rename(tmp, paths.dir);
    if (old !== null && !(await imageInUse(old))) await removeCacheDir(imageDir, old);
    return {
      image: { meta, dir: paths.dir, rootfs: paths.rootfs, names: [] },
      stats: {
        format: plan.format,
        layers: plan.layers.length,
        entries: tree.entries,
        strippedSpecialBits: tree.stripped,
        skipped: tree.skippedFifos + tree.skippedAufsMetadata,
        skippedFifos: tree.skippedFifos,
        skippedAufsMetadata: tree.skippedAufsMetadata,
      },
    };
  } catch (err) {
    await removeCacheDir(imageDir, tmp).catch((cleanupError: unknown) => {
      process.stderr.write(
        `corral: could not clean up ${tmp}: ${cleanupError instanceof Error ? cleanupError.message : String(cleanupError)}\n`,
      );
    });
    // The archive's own faults (here and in archive-format.ts) are invalid_argument.
    if (err instanceof Refusal || (err instanceof CorralError && err.code === "invalid_argument")) {
      throw new CorralError(
        "invalid_argument",
        `refusing to import ${path.basename(file)}: ${err.message}`,
      );
    }
    if (err instanceof CorralError) throw err;
    const code = errno(err);
    if (code === "ENOSPC") {
      throw new CorralError(
        "build_failed",
        `importing ${path.basename(file)}: no space left in ${imageDir}`,
      );
    }
    throw new CorralError(
      "build_failed",
      `importing ${path.basename(file)} failed: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
}
