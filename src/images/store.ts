/**
 * The image cache on disk, shared by every Corral data directory on the machine:
 *
 *   <imageDir>/<key>/meta.json   what was built, from what, and its digest (written last)
 *   <imageDir>/<key>/rootfs/     the shifted root filesystem: the sandboxes' lower layer
 *   <imageDir>/<key>/build.log   the build's output (built images)
 *   <imageDir>/names/<name>      the key of the image last built under that name
 *   <imageDir>/logs/<key>.log    the output of the last failed build of that key
 *   <imageDir>/.tmp-<key>-<rnd>  a build in progress (renamed to <key> when complete)
 *
 * `<key>` is the first 16 hex digits of the recipe key (of an imported image: of the hash
 * of its archive, see import.ts). An image directory appears by an
 * atomic rename once complete, so a reader never sees half an image.
 */

import { randomBytes } from "node:crypto";
import {
  chmod,
  lstat,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  unlink,
  writeFile,
} from "node:fs/promises";
import path from "node:path";
import { z } from "zod";
import { dataTag } from "../core/config.js";
import { ensureDir } from "../core/dirs.js";
import { CorralError } from "../core/errors.js";
import { acquireLock } from "../core/lock.js";
import { runCommand } from "../core/proc.js";
import { mountsUnder } from "../sandbox/runtime/mounts.js";

export const META_VERSION = 1;

const imageMetaSchema = z.object({
  version: z.literal(META_VERSION),
  status: z.literal("complete"),
  key: z.string().regex(/^[0-9a-f]{16}$/),
  recipeKey: z.string().regex(/^[0-9a-f]{64}$/),
  name: z.string(),
  digest: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  created: z.string(),
  mirror: z.string(),
  suite: z.string(),
  architecture: z.string(),
  packages: z.array(z.string()),
  setup: z.array(z.string()),
  env: z.record(z.string(), z.string()),
  /** The host uid/gid that is 0 inside sandboxes: the tree was shifted to it, once. */
  uidBase: z.number().int(),
  shifted: z.literal(true),
  sizeBytes: z.number(),
  files: z.number(),
  buildSeconds: z.number(),
  /**
   * What the image runs when given no program (`docker run IMAGE`), from an imported
   * image's config: arguments after `--` replace `cmd`, and `entrypoint` stays. Absent in
   * built images (they have none) and in images imported by an older Corral.
   */
  process: z
    .object({
      entrypoint: z.array(z.string()).nullable(),
      cmd: z.array(z.string()).nullable(),
      workingDir: z.string().nullable(),
    })
    .optional(),
  /**
   * Where an imported image came from (`corral image import`); absent for built ones,
   * whose recipe fields above say it. An import has no mirror, suite, packages or setup.
   */
  source: z
    .object({
      kind: z.literal("import"),
      file: z.string(),
      format: z.enum(["rootfs", "docker-save", "oci"]),
      archiveSha256: z.string().regex(/^[0-9a-f]{64}$/),
      layers: z.number().int(),
      /**
       * The name the archive gives its image (a RepoTag, an OCI reference), null when it
       * gives none; absent in images imported by an older Corral.
       */
      archiveName: z.string().nullable().optional(),
    })
    .optional(),
});

/** meta.json of a complete image. */
export type ImageMeta = z.infer<typeof imageMetaSchema>;

/** A built image as found in the cache. */
export interface StoredImage {
  meta: ImageMeta;
  /** `<imageDir>/<key>` */
  dir: string;
  /** `<imageDir>/<key>/rootfs` */
  rootfs: string;
  /** The names that currently point at this image (usually one, or none for a superseded build). */
  names: string[];
}

const KEY_DIR = /^[0-9a-f]{16}$/;
/**
 * An image name: NAME or NAME:TAG, as Docker's last path component and tag are spelled
 * (NAME lower-case letters, digits, ".", "_", "-", at most 63; TAG letters of either case,
 * digits, ".", "_", "-", at most 128, not starting with "." or "-"). A name is also a file
 * name under <imageDir>/names, which ":" may be part of and "/" may not. "sha256:..." is
 * never a name: it is how digests are written.
 */
export const IMAGE_NAME =
  /^(?!sha256:)[a-z0-9][a-z0-9._-]{0,62}(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$/;
export const IMAGE_NAME_RULE =
  'NAME or NAME:TAG, NAME of lower-case letters, digits, ".", "_" and "-" (at most 63)';

/** As Docker reads them, "mini:latest" and "mini" are one name: the tag "latest" is dropped. */
export function canonicalImageName(name: string): string {
  return name.endsWith(":latest") ? name.slice(0, -":latest".length) : name;
}

/**
 * The image name for a Docker image reference ("docker.io/library/mini:layered",
 * "mini:latest", "ghcr.io/acme/tool@sha256:..."): its last path component and its tag
 * ("mini:layered", "mini", "tool"), or null when that is no valid name. The registry and
 * namespace are dropped, because a name cannot hold "/".
 */
export function imageNameFromReference(reference: string): string | null {
  const noDigest = reference.split("@")[0] ?? "";
  const last = noDigest.slice(noDigest.lastIndexOf("/") + 1);
  const colon = last.indexOf(":");
  const repo = (colon < 0 ? last : last.slice(0, colon)).toLowerCase();
  const name = canonicalImageName(colon < 0 ? repo : `${repo}:${last.slice(colon + 1)}`);
  return IMAGE_NAME.test(name) ? name : null;
}

export function imagePaths(
  imageDir: string,
  key: string,
): { dir: string; rootfs: string; meta: string; log: string } {
  const dir = path.join(imageDir, key);
  return {
    dir,
    rootfs: path.join(dir, "rootfs"),
    meta: path.join(dir, "meta.json"),
    log: path.join(dir, "build.log"),
  };
}

/** The lock held while an image key is built or removed (per image directory). */
export function imageLockName(imageDir: string, key: string): string {
  return `corral/images/${dataTag(imageDir)}/${key}`;
}

/**
 * Take the lock of image `key`, waiting while another process builds or removes it. An
 * aborted `signal` stops the wait.
 */
export async function takeImageLock(
  imageDir: string,
  key: string,
  options: { signal?: AbortSignal | undefined; onWait?: () => void; timeoutMs?: number } = {},
): Promise<() => Promise<void>> {
  const deadline = Date.now() + (options.timeoutMs ?? 60 * 60_000);
  let told = false;
  for (;;) {
    const release = await acquireLock(imageLockName(imageDir, key));
    if (release) return release;
    if (options.signal?.aborted) {
      throw new CorralError("build_failed", `interrupted while waiting for image ${key}`);
    }
    if (Date.now() > deadline) {
      throw new CorralError(
        "busy",
        `image ${key} is being built or removed by another process`,
        "try again later",
      );
    }
    if (!told) {
      told = true;
      options.onWait?.();
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** The meta of the complete image `key`, or null if there is none (or it is unreadable). */
export async function readImageMeta(imageDir: string, key: string): Promise<ImageMeta | null> {
  let text: string;
  try {
    text = await readFile(imagePaths(imageDir, key).meta, "utf8");
  } catch {
    return null;
  }
  try {
    const parsed = imageMetaSchema.safeParse(JSON.parse(text));
    if (!parsed.success || parsed.data.key !== key) return null;
    return parsed.data;
  } catch {
    return null;
  }
}

export async function writeImageMeta(file: string, meta: ImageMeta): Promise<void> {
  await writeFile(file, `${JSON.stringify(imageMetaSchema.parse(meta), null, 2)}\n`, {
    mode: 0o644,
  });
}

/** name → key for every name in the cache. */
export async function readNames(imageDir: string): Promise<Map<string, string>> {
  const names = new Map<string, string>();
  let entries: string[] = [];
  try {
    entries = await readdir(path.join(imageDir, "names"));
  } catch {
    return names;
  }
  for (const name of entries) {
    if (!IMAGE_NAME.test(name)) continue;
    try {
      const key = (await readFile(path.join(imageDir, "names", name), "utf8")).trim();
      if (KEY_DIR.test(key)) names.set(name, key);
    } catch {
      // removed meanwhile
    }
  }
  return names;
}

/** Point `name` at `key` (atomically; a no-op when it already does). */
export async function setImageName(
  imageDir: string,
  givenName: string,
  key: string,
): Promise<void> {
  const name = canonicalImageName(givenName);
  if (!IMAGE_NAME.test(name))
    throw new CorralError("invalid_argument", `"${name}" is not a valid image name`);
  const file = path.join(imageDir, "names", name);
  try {
    if ((await readFile(file, "utf8")).trim() === key) return;
  } catch {
    // not there yet
  }
  await mkdir(path.join(imageDir, "names"), { recursive: true, mode: 0o755 });
  const tmp = `${file}.tmp-${randomBytes(4).toString("hex")}`;
  await writeFile(tmp, `${key}\n`, { mode: 0o644 });
  await rename(tmp, file);
}

export async function listImages(imageDir: string): Promise<StoredImage[]> {
  let entries: string[];
  try {
    entries = await readdir(imageDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const names = await readNames(imageDir);
  const images: StoredImage[] = [];
  for (const key of entries) {
    if (!KEY_DIR.test(key)) continue;
    const meta = await readImageMeta(imageDir, key);
    if (!meta) continue;
    const { dir, rootfs } = imagePaths(imageDir, key);
    const pointing = [...names]
      .filter(([, k]) => k === key)
      .map(([n]) => n)
      .sort();
    images.push({ meta, dir, rootfs, names: pointing });
  }
  return images.sort((a, b) =>
    a.meta.created < b.meta.created ? -1 : a.meta.created > b.meta.created ? 1 : 0,
  );
}

function notBuilt(ref: string, imageDir: string): CorralError {
  if (ref === "default") {
    return new CorralError(
      "image_not_built",
      'image "default" is not built: run `corral image build` (about 3 minutes)',
    );
  }
  if (IMAGE_NAME.test(ref) && !/^(sha256:)?[0-9a-f]{8,}$/.test(ref)) {
    // A recipe's name has no tag: a NAME:TAG can only come from an import.
    const build = ref.includes(":")
      ? ""
      : `\`corral image build RECIPE.yaml\` with a recipe named ${ref}, or `;
    return new CorralError(
      "image_not_built",
      `image "${ref}" is not built: run ${build}\`corral image import FILE --name ${ref}\``,
      "`corral image ls` lists the images there are",
    );
  }
  return new CorralError(
    "image_not_built",
    `no image matches "${ref}" in ${imageDir}`,
    "`corral image ls` lists the built images",
  );
}

/**
 * The image `ref` names: an image name (`default`), a key or key prefix, or a digest or
 * digest prefix (`sha256:3fa2…`, or 8 or more hex digits). Names win over prefixes.
 */
export async function resolveImage(imageDir: string, ref: string): Promise<StoredImage> {
  const images = await listImages(imageDir);
  const name = canonicalImageName(ref);
  const byName = images.find((img) => img.names.includes(name));
  if (byName) return byName;
  if (IMAGE_NAME.test(ref) && !/^[0-9a-f]+$/.test(ref)) throw notBuilt(ref, imageDir);

  const digestPrefix = /^sha256:([0-9a-f]{1,64})$/.exec(ref)?.[1];
  const hexPrefix = /^[0-9a-f]{8,64}$/.test(ref) ? ref : undefined;
  if (digestPrefix === undefined && hexPrefix === undefined) throw notBuilt(ref, imageDir);
  const matches = images.filter((img) => {
    const digestHex = img.meta.digest.slice("sha256:".length);
    if (digestPrefix !== undefined) return digestHex.startsWith(digestPrefix);
    const hex = hexPrefix as string;
    return (
      img.meta.key.startsWith(hex) ||
      img.meta.recipeKey.startsWith(hex) ||
      digestHex.startsWith(hex)
    );
  });
  const [first, second] = matches;
  if (!first) throw notBuilt(ref, imageDir);
  if (second) {
    throw new CorralError(
      "invalid_argument",
      `"${ref}" is ambiguous: it matches images ${matches.map((m) => m.meta.key).join(", ")}`,
      "give more digits",
    );
  }
  return first;
}

/** Whether a mount uses `rootfs` (an overlay's lower layer) or sits below `dir`. */
export async function imageInUse(dir: string): Promise<boolean> {
  if ((await mountsUnder(dir)).length > 0) return true;
  const mountinfo = await readFile("/proc/self/mountinfo", "utf8");
  const rootfs = path.join(dir, "rootfs");
  return mountinfo.split("\n").some((line) => {
    const options = line.slice(line.indexOf(" - ") + 3);
    return (
      options.includes(`lowerdir=${rootfs},`) ||
      options.includes(`lowerdir=${rootfs}:`) ||
      options.includes(`:${rootfs},`)
    );
  });
}

/**
 * Remove a directory of the image cache: only a direct child of `imageDir`, never through a
 * symbolic link, never with anything mounted below it, and never crossing into another
 * file system (`rm --one-file-system`).
 */
export async function removeCacheDir(imageDir: string, dir: string): Promise<void> {
  if (path.dirname(path.resolve(dir)) !== path.resolve(imageDir)) {
    throw new CorralError(
      "internal",
      `refusing to remove ${dir}: not an entry of the image cache ${imageDir}`,
    );
  }
  let s: Awaited<ReturnType<typeof lstat>>;
  try {
    s = await lstat(dir);
  } catch {
    return;
  }
  if (!s.isDirectory()) {
    await unlink(dir);
    return;
  }
  const mounts = await mountsUnder(dir);
  if (mounts.length > 0) {
    throw new CorralError("busy", `refusing to remove ${dir}: ${mounts[0]} is mounted below it`);
  }
  const r = await runCommand(["rm", "-rf", "--one-file-system", "--", dir], { timeoutMs: 600_000 });
  if (r.code !== 0) throw new CorralError("internal", `removing ${dir} failed: ${r.stderr.trim()}`);
}

/** What `removeImage` did: removed one name of the image, or the image itself. */
export interface Removal {
  image: StoredImage;
  /** The name removed while other names still point at the image; null: the image went. */
  untagged: string | null;
}

/**
 * Remove `ref` as `docker rmi` does: given one of several names of an image, only that name
 * goes; given its last name, or its key or digest, the image goes with all its names.
 */
export async function removeImage(imageDir: string, ref: string): Promise<Removal> {
  const image = await resolveImage(imageDir, ref);
  const key = image.meta.key;
  const name = canonicalImageName(ref);
  const release = await takeImageLock(imageDir, key);
  try {
    // The names as they are now, under the lock (another process may have changed them).
    const names = [...(await readNames(imageDir))].filter(([, k]) => k === key).map(([n]) => n);
    if (names.includes(name) && names.length > 1) {
      await rm(path.join(imageDir, "names", name), { force: true });
      return { image: { ...image, names: names.filter((n) => n !== name).sort() }, untagged: name };
    }
    if (await imageInUse(image.dir)) {
      throw new CorralError(
        "busy",
        `image ${ref} (${key}) is in use by a running sandbox`,
        "stop it, or run `corral gc`",
      );
    }
    // Disappear atomically first, then delete at leisure.
    const doomed = path.join(imageDir, `.rm-${key}-${randomBytes(4).toString("hex")}`);
    await rename(image.dir, doomed);
    for (const [name, k] of await readNames(imageDir)) {
      if (k === key) await rm(path.join(imageDir, "names", name), { force: true });
    }
    await removeCacheDir(imageDir, doomed);
  } finally {
    await release();
  }
  return { image, untagged: null };
}

/** Ensure `imageDir` exists and can be traversed by the sandboxes' ids (o+x). */
export async function ensureImageDir(imageDir: string): Promise<void> {
  await ensureDir(imageDir, "choose another --image-dir");
  const s = await stat(imageDir);
  if ((s.mode & 0o001) === 0) {
    await chmod(imageDir, (s.mode & 0o7777) | 0o001);
  }
}
