/**
 * What kind of archive `corral image import` was given, and which layers it holds, in
 * order: pure functions over the archive's member names and its small JSON files.
 *
 * - `docker save`: manifest.json lists one image: its config (JSON) and its layers (tar
 *   members, possibly gzip-compressed). Docker 25+ writes an OCI layout as well; its
 *   manifest.json is read first either way.
 * - OCI image layout: oci-layout, index.json → manifest (possibly through nested
 *   indexes, by platform) → config and layers, all as blobs/<alg>/<hex>.
 * - Anything else is a root filesystem tarball (`docker export`): one layer, the archive.
 */
import { CorralError, quoteUntrusted } from "../core/errors.js";
import { ENV_NAME } from "../core/run-options.js";
import { normaliseArchivePath } from "./import-policy.js";

export type ArchiveFormat = "rootfs" | "docker-save" | "oci";

export interface LayerRef {
  /** The member of the archive holding the layer (empty for a rootfs: the archive itself). */
  member: string;
  /** sha256 hex of the member's bytes as stored (OCI digests, docker's blobs/sha256 names). */
  storedSha256?: string;
  /** sha256 hex of the uncompressed tar (the config's diff id). */
  diffSha256?: string;
}

/** What an image runs when given no program, as its config says (`docker run IMAGE`). */
export interface ImageProcess {
  /** Always run first; arguments after `--` replace `cmd`, never this. */
  entrypoint: string[] | null;
  cmd: string[] | null;
  /** Absolute and normalised; null when the config has none. */
  workingDir: string | null;
}

export interface ImageConfigInfo extends ImageProcess {
  env: Record<string, string>;
  architecture?: string;
}

function refuse(message: string): CorralError {
  return new CorralError("invalid_argument", message);
}

export function detectArchiveFormat(members: ReadonlySet<string>): ArchiveFormat {
  if (members.has("manifest.json")) return "docker-save";
  if (members.has("index.json") && members.has("oci-layout")) return "oci";
  return "rootfs";
}

function memberPath(value: unknown, what: string): string {
  if (typeof value !== "string" || value === "") throw refuse(`${what} is not a file name`);
  const p = normaliseArchivePath(value);
  if (!p.ok || p.path === "")
    throw refuse(`${what} ${quoteUntrusted(value)} ${p.ok ? "is empty" : p.reason}`);
  return p.path;
}

const SHA256 = /^sha256:([0-9a-f]{64})$/;

/** blobs/sha256/<hex> → hex: such a member's name is its digest. */
function blobNameSha256(member: string): string | undefined {
  return /^blobs\/sha256\/([0-9a-f]{64})$/.exec(member)?.[1];
}

/**
 * manifest.json of `docker save`: exactly one image, its config member, its layers and
 * its RepoTags ("mini:layered"; none when the image was saved by id).
 */
export function parseDockerManifest(json: unknown): {
  config: string;
  layers: LayerRef[];
  repoTags: string[];
} {
  if (!Array.isArray(json)) throw refuse("manifest.json is not a list of images");
  if (json.length !== 1) {
    throw refuse(
      `manifest.json lists ${json.length} images; save one image per archive (docker save IMAGE)`,
    );
  }
  const image = json[0] as { Config?: unknown; Layers?: unknown; RepoTags?: unknown };
  const config = memberPath(image.Config, "manifest.json's Config");
  if (!Array.isArray(image.Layers)) throw refuse("manifest.json's Layers is not a list");
  const layers = image.Layers.map((l, i): LayerRef => {
    const member = memberPath(l, `manifest.json's layer ${i + 1}`);
    const stored = blobNameSha256(member);
    return { member, ...(stored ? { storedSha256: stored } : {}) };
  });
  const repoTags = Array.isArray(image.RepoTags)
    ? image.RepoTags.filter((t): t is string => typeof t === "string")
    : [];
  return { config, layers, repoTags };
}

/** The "diff_ids" of an image config (uncompressed layer digests), when it has them. */
export function configDiffIds(json: unknown): string[] | undefined {
  const ids = (json as { rootfs?: { diff_ids?: unknown } } | null)?.rootfs?.diff_ids;
  if (!Array.isArray(ids)) return undefined;
  return ids.map((d, i) => {
    const m = typeof d === "string" ? SHA256.exec(d) : null;
    if (!m) throw refuse(`the image config's diff id ${i + 1} is not a sha256 digest`);
    return m[1]!;
  });
}

/** Attach the config's diff ids to the layers (they must match in number). */
export function withDiffIds(layers: LayerRef[], diffIds: string[] | undefined): LayerRef[] {
  if (diffIds === undefined) return layers;
  if (diffIds.length !== layers.length) {
    throw refuse(
      `the image config names ${diffIds.length} layers but the manifest lists ${layers.length}`,
    );
  }
  return layers.map((l, i) => ({ ...l, diffSha256: diffIds[i]! }));
}

const PATH_DEFAULT = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** An argv of the config (Entrypoint, Cmd): a list of strings without NUL, or null. */
function configArgv(value: unknown, what: string): string[] | null {
  if (value === undefined || value === null) return null;
  if (!Array.isArray(value) || value.some((a) => typeof a !== "string")) {
    throw refuse(`the image config's ${what} is not a list of strings`);
  }
  if (value.some((a: string) => a.includes("\0")))
    throw refuse(`the image config's ${what} contains a NUL byte`);
  return value.length === 0 ? null : [...(value as string[])];
}

/**
 * The config's WorkingDir, absolute and normalised (Docker takes a relative one from
 * "/"); ".." cannot climb above the root. Null when empty or absent.
 */
function configWorkingDir(value: unknown): string | null {
  if (value === undefined || value === null || value === "") return null;
  if (typeof value !== "string") throw refuse("the image config's WorkingDir is not a string");
  if (value.includes("\0")) throw refuse("the image config's WorkingDir contains a NUL byte");
  const parts: string[] = [];
  for (const part of value.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return `/${parts.join("/")}`;
}

/**
 * What an image config declares: the environment (PATH defaulted), the architecture, and
 * what runs by default (Entrypoint, Cmd, WorkingDir).
 */
export function parseImageConfig(json: unknown): ImageConfigInfo {
  const root = (json ?? {}) as {
    architecture?: unknown;
    config?: { Env?: unknown; Entrypoint?: unknown; Cmd?: unknown; WorkingDir?: unknown } | null;
  };
  const env: Record<string, string> = {};
  const list = root.config?.Env;
  if (list !== undefined && list !== null) {
    if (!Array.isArray(list)) throw refuse("the image config's Env is not a list");
    for (const item of list) {
      if (typeof item !== "string") continue;
      const eq = item.indexOf("=");
      const key = eq > 0 ? item.slice(0, eq) : "";
      if (!ENV_NAME.test(key) || item.includes("\0")) continue;
      env[key] = item.slice(eq + 1);
    }
  }
  env.PATH ??= PATH_DEFAULT;
  return {
    env,
    ...(typeof root.architecture === "string" ? { architecture: root.architecture } : {}),
    entrypoint: configArgv(root.config?.Entrypoint, "Entrypoint"),
    cmd: configArgv(root.config?.Cmd, "Cmd"),
    workingDir: configWorkingDir(root.config?.WorkingDir),
  };
}

export function defaultEnv(): Record<string, string> {
  return { PATH: PATH_DEFAULT };
}

/** A root filesystem tarball has no config: no default program. */
export const NO_PROCESS: ImageProcess = Object.freeze({
  entrypoint: null,
  cmd: null,
  workingDir: null,
});

export interface OciDescriptor {
  mediaType: string;
  digest: string;
  platform?: { os?: string; architecture?: string };
  urls?: unknown;
  annotations?: unknown;
}

/**
 * The reference an OCI index gives the image it lists, from the descriptor's annotations:
 * containerd's (and so Docker's) `io.containerd.image.name` is a whole reference
 * ("docker.io/library/mini:layered"); `org.opencontainers.image.ref.name` is a whole
 * reference too when it holds a ":" or a "/", and otherwise only a tag ("layered", "1.0"),
 * as the image-layout specification suggests and Docker writes it.
 */
export function ociReference(
  d: OciDescriptor,
): { kind: "reference"; value: string } | { kind: "tag"; value: string } | null {
  const a = (d.annotations ?? {}) as Record<string, unknown>;
  const containerd = a["io.containerd.image.name"];
  if (typeof containerd === "string" && containerd !== "")
    return { kind: "reference", value: containerd };
  const ref = a["org.opencontainers.image.ref.name"];
  if (typeof ref !== "string" || ref === "") return null;
  return /[:/]/.test(ref) ? { kind: "reference", value: ref } : { kind: "tag", value: ref };
}

const INDEX_TYPES = new Set([
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
]);
const MANIFEST_TYPES = new Set([
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
]);

function descriptor(value: unknown, what: string): OciDescriptor {
  const d = value as Partial<OciDescriptor> | null;
  if (!d || typeof d.digest !== "string" || !SHA256.test(d.digest)) {
    throw refuse(`${what} has no sha256 digest`);
  }
  return { ...d, mediaType: typeof d.mediaType === "string" ? d.mediaType : "" } as OciDescriptor;
}

/** The blob member of a descriptor. */
export function blobMember(d: OciDescriptor): string {
  return `blobs/sha256/${d.digest.slice("sha256:".length)}`;
}

export function isIndexDescriptor(d: OciDescriptor): boolean {
  return INDEX_TYPES.has(d.mediaType);
}

/**
 * From an index (index.json or a nested one) the one descriptor to follow: the only
 * one, or the one for linux/`arch`. Attestation manifests (platform unknown/unknown) are
 * never chosen.
 */
export function pickFromIndex(json: unknown, arch: string): OciDescriptor {
  const manifests = (json as { manifests?: unknown } | null)?.manifests;
  if (!Array.isArray(manifests) || manifests.length === 0) {
    throw refuse("the OCI index lists no manifests");
  }
  const all = manifests.map((m, i) => descriptor(m, `index manifest ${i + 1}`));
  const usable = all.filter(
    (d) =>
      (MANIFEST_TYPES.has(d.mediaType) || INDEX_TYPES.has(d.mediaType) || d.mediaType === "") &&
      d.platform?.architecture !== "unknown",
  );
  if (usable.length === 1) return usable[0]!;
  const matching = usable.filter(
    (d) => (d.platform?.os ?? "linux") === "linux" && d.platform?.architecture === arch,
  );
  if (matching.length === 1) return matching[0]!;
  throw refuse(
    `the OCI index lists ${usable.length} images and ${matching.length} for linux/${arch}; export one image`,
  );
}

/** An OCI (or Docker v2) manifest: its config descriptor and layers. */
export function parseOciManifest(json: unknown): { config: OciDescriptor; layers: LayerRef[] } {
  const m = json as { config?: unknown; layers?: unknown } | null;
  const config = descriptor(m?.config, "the manifest's config");
  if (!Array.isArray(m?.layers)) throw refuse("the manifest's layers are not a list");
  const layers = m.layers.map((l, i): LayerRef => {
    const d = descriptor(l, `layer ${i + 1}`);
    if (d.urls !== undefined) {
      throw refuse(
        `layer ${i + 1} is a foreign layer (fetched from a URL); it is not in the archive`,
      );
    }
    if (/zstd/.test(d.mediaType)) {
      throw refuse(`layer ${i + 1} is zstd-compressed (${d.mediaType}); only gzip is supported`);
    }
    return { member: blobMember(d), storedSha256: d.digest.slice("sha256:".length) };
  });
  return { config, layers };
}

/** Docker's and OCI's name for the host's architecture. */
export function ociArchitecture(nodeArch: string): string {
  const map: Record<string, string> = { x64: "amd64", arm64: "arm64", arm: "arm", ia32: "386" };
  return map[nodeArch] ?? nodeArch;
}
