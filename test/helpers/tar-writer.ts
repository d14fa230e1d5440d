/**
 * A minimal tar writer for tests: it writes whatever it is told, including the names and
 * entry types a hostile archive would hold (absolute paths, "..", devices). Long names
 * and link targets go into a pax header, as GNU tar --format=pax does.
 */
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";

export interface TarSpec {
  name: string;
  type?: "file" | "dir" | "symlink" | "hardlink" | "char" | "block" | "fifo";
  data?: Buffer | string;
  mode?: number;
  uid?: number;
  gid?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  mtime?: number;
}

const TYPEFLAG = {
  file: "0",
  hardlink: "1",
  symlink: "2",
  char: "3",
  block: "4",
  dir: "5",
  fifo: "6",
} as const;

function octal(n: number, width: number): string {
  return `${n.toString(8).padStart(width - 1, "0")}\0`;
}

export function header(
  name: string,
  typeflag: string,
  size: number,
  spec: Partial<TarSpec> & { linkname?: string },
): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0, 100, "utf8");
  b.write(octal(spec.mode ?? 0o644, 8), 100, "latin1");
  b.write(octal(spec.uid ?? 0, 8), 108, "latin1");
  b.write(octal(spec.gid ?? 0, 8), 116, "latin1");
  b.write(octal(size, 12), 124, "latin1");
  b.write(octal(spec.mtime ?? 1_700_000_000, 12), 136, "latin1");
  b.write("        ", 148, "latin1");
  b.write(typeflag, 156, "latin1");
  b.write(spec.linkname ?? "", 157, 100, "utf8");
  b.write("ustar\u000000", 257, "latin1");
  b.write(octal(spec.devmajor ?? 0, 8), 329, "latin1");
  b.write(octal(spec.devminor ?? 0, 8), 337, "latin1");
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return b;
}

export function pad(n: number): Buffer {
  return Buffer.alloc((512 - (n % 512)) % 512);
}

export function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(body) + 1;
  while (String(len).length + Buffer.byteLength(body) !== len)
    len = String(len).length + Buffer.byteLength(body);
  return `${len}${body}`;
}

/** A tar archive (uncompressed) holding exactly these entries, in this order. */
export function tarArchive(entries: TarSpec[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const type = e.type ?? "file";
    const data =
      type === "file"
        ? typeof e.data === "string"
          ? Buffer.from(e.data)
          : (e.data ?? Buffer.alloc(0))
        : Buffer.alloc(0);
    const linkname = e.linkname ?? "";
    let records = "";
    if (Buffer.byteLength(e.name) > 99) records += paxRecord("path", e.name);
    if (Buffer.byteLength(linkname) > 99) records += paxRecord("linkpath", linkname);
    if (records !== "") {
      const paxData = Buffer.from(records);
      parts.push(header("PaxHeader", "x", paxData.length, {}), paxData, pad(paxData.length));
    }
    const defaultMode = type === "dir" ? 0o755 : type === "symlink" ? 0o777 : 0o644;
    parts.push(
      header(e.name.slice(0, 99), TYPEFLAG[type], data.length, {
        ...e,
        mode: e.mode ?? defaultMode,
        linkname: linkname.slice(0, 99),
      }),
      data,
      pad(data.length),
    );
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

export function sha256(b: Buffer): string {
  return createHash("sha256").update(b).digest("hex");
}

/**
 * A `docker save` archive (the classic layout: <id>/layer.tar, <hex>.json, manifest.json)
 * of these layers, each given as its entries. The config names the layers' diff ids and
 * the image's environment, and holds whatever else `config` adds (Entrypoint, Cmd...).
 */
export function dockerSaveArchive(
  layers: TarSpec[][],
  options: { env?: string[]; repoTag?: string; config?: Record<string, unknown> } = {},
): Buffer {
  const layerTars = layers.map((l) => tarArchive(l));
  const diffIds = layerTars.map((t) => `sha256:${sha256(t)}`);
  const config = Buffer.from(
    JSON.stringify({
      architecture: "amd64",
      os: "linux",
      config: { Env: options.env ?? ["PATH=/usr/bin:/bin"], ...options.config },
      rootfs: { type: "layers", diff_ids: diffIds },
    }),
  );
  const configName = `${sha256(config)}.json`;
  const entries: TarSpec[] = [];
  const layerPaths: string[] = [];
  layerTars.forEach((t, i) => {
    const id = sha256(Buffer.from(`layer-${i}-${diffIds[i]}`));
    entries.push({ name: `${id}/`, type: "dir" });
    entries.push({ name: `${id}/VERSION`, data: "1.0" });
    entries.push({ name: `${id}/layer.tar`, data: t });
    layerPaths.push(`${id}/layer.tar`);
  });
  entries.push({ name: configName, data: config });
  entries.push({
    name: "manifest.json",
    data: JSON.stringify([
      { Config: configName, RepoTags: [options.repoTag ?? "test:latest"], Layers: layerPaths },
    ]),
  });
  return tarArchive(entries);
}

/** An OCI image layout archive of these layers (gzip-compressed blobs). */
export function ociArchive(
  layers: TarSpec[][],
  options: { env?: string[]; annotations?: Record<string, string> } = {},
): Buffer {
  const blobs: TarSpec[] = [];
  const blob = (data: Buffer): { digest: string; size: number } => {
    const hex = sha256(data);
    blobs.push({ name: `blobs/sha256/${hex}`, data });
    return { digest: `sha256:${hex}`, size: data.length };
  };
  const layerTars = layers.map((l) => tarArchive(l));
  const layerDescs = layerTars.map((t) => ({
    mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
    ...blob(gzipSync(t)),
  }));
  const config = blob(
    Buffer.from(
      JSON.stringify({
        architecture: "amd64",
        os: "linux",
        config: { Env: options.env ?? ["PATH=/usr/bin:/bin"] },
        rootfs: { type: "layers", diff_ids: layerTars.map((t) => `sha256:${sha256(t)}`) },
      }),
    ),
  );
  const manifest = blob(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
        layers: layerDescs,
      }),
    ),
  );
  return tarArchive([
    { name: "oci-layout", data: JSON.stringify({ imageLayoutVersion: "1.0.0" }) },
    { name: "blobs/", type: "dir" },
    { name: "blobs/sha256/", type: "dir" },
    ...blobs,
    {
      name: "index.json",
      data: JSON.stringify({
        schemaVersion: 2,
        manifests: [
          {
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            ...manifest,
            ...(options.annotations ? { annotations: options.annotations } : {}),
          },
        ],
      }),
    },
  ]);
}
