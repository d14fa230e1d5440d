/** `corral image build | import | ls | rm`: the image cache from the command line. */

import { CorralError } from "../core/errors.js";
import { formatBytes } from "../core/limits.js";
import { type BuildProgress, buildImage } from "../images/build.js";
import { importImage } from "../images/import.js";
import { findHostMirror } from "../images/mirror.js";
import { loadDefaultRecipe, loadRecipe, type Recipe } from "../images/recipe.js";
import { listImages, removeImage, type StoredImage } from "../images/store.js";
import { formatTable } from "./output.js";

export interface ImageBuildFlags {
  /** A recipe file; the built-in recipe when absent. */
  recipe?: string;
  mirror?: string;
  imageDir: string;
  uidBase: number;
  json: boolean;
}

/** The mirror to build from: the flag, else the recipe's, else the host's apt configuration. */
export async function chooseMirror(recipe: Recipe, flag: string | undefined): Promise<string> {
  if (flag !== undefined) {
    if (!/^(https?|file):\/\/\S+$/.test(flag)) {
      throw new CorralError(
        "invalid_argument",
        `--mirror ${flag}: not an http://, https:// or file:// URL`,
      );
    }
    return flag.replace(/\/+$/, "");
  }
  if (recipe.mirror) return recipe.mirror;
  const host = await findHostMirror(recipe.suite);
  if (host) return host;
  throw new CorralError(
    "prerequisite_missing",
    "no Debian mirror found in the host's apt configuration; pass --mirror URL",
  );
}

/** One updating line on a terminal, plain step lines otherwise (logs, CI). */
export function progressPrinter(stream: NodeJS.WriteStream = process.stderr): {
  update: (p: BuildProgress) => void;
  done: () => void;
} {
  if (stream.isTTY) {
    let last = 0;
    let shown = false;
    return {
      update: (p) => {
        const now = Date.now();
        if (now - last < 100 && p.fraction < 1) return;
        last = now;
        const width = 20;
        const filled = Math.round(p.fraction * width);
        const pct = String(Math.floor(p.fraction * 100)).padStart(3);
        let line = `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${pct}% ${p.step}${p.detail ? `: ${p.detail}` : ""}`;
        const columns = stream.columns || 80;
        if (line.length > columns - 1) line = line.slice(0, columns - 1);
        stream.write(`\r\x1b[2K${line}`);
        shown = true;
      },
      done: () => {
        if (shown) stream.write("\r\x1b[2K");
      },
    };
  }
  let lastStep = "";
  const started = Date.now();
  return {
    update: (p) => {
      if (p.step === lastStep) return;
      lastStep = p.step;
      const elapsed = Math.round((Date.now() - started) / 1000);
      stream.write(
        `corral: image build: ${p.step} (${Math.floor(p.fraction * 100)}%, ${elapsed} s)\n`,
      );
    },
    done: () => {},
  };
}

function formatDuration(seconds: number): string {
  const s = Math.round(seconds);
  return s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}

function imageJson(
  image: StoredImage,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return { ...extra, ...image.meta, names: image.names, rootfs: image.rootfs };
}

export async function imageBuildCommand(flags: ImageBuildFlags): Promise<number> {
  const recipe = flags.recipe ? await loadRecipe(flags.recipe) : await loadDefaultRecipe();
  const mirror = await chooseMirror(recipe, flags.mirror);
  const progress = progressPrinter();
  // Ctrl-C or a TERM stops the build cleanly: the running step is terminated, the chroot's
  // mounts and the half-built tree are removed before the command exits.
  const abort = new AbortController();
  const stop = (): void => abort.abort();
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  let result: Awaited<ReturnType<typeof buildImage>>;
  try {
    result = await buildImage({
      recipe,
      mirror,
      imageDir: flags.imageDir,
      uidBase: flags.uidBase,
      onProgress: progress.update,
      signal: abort.signal,
    });
  } finally {
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
    progress.done();
  }
  const { meta } = result;
  if (flags.json) {
    process.stdout.write(
      `${JSON.stringify(imageJson(result, { cached: result.cached }), null, 2)}\n`,
    );
    return 0;
  }
  const how = result.cached ? "already built" : `built in ${formatDuration(meta.buildSeconds)}`;
  process.stdout.write(
    `image ${meta.name} ${how}\n` +
      `  key     ${meta.key}\n` +
      `  digest  ${meta.digest}\n` +
      `  size    ${formatBytes(meta.sizeBytes)} (${meta.files} files)\n` +
      `  rootfs  ${result.rootfs}\n`,
  );
  return 0;
}

export interface ImageImportFlags {
  file: string;
  name?: string;
  imageDir: string;
  uidBase: number;
  json: boolean;
}

export async function imageImportCommand(flags: ImageImportFlags): Promise<number> {
  const started = Date.now();
  // The step on one updating line at a terminal, and nothing otherwise: a refusal must
  // stay the only line a script sees.
  const tty = process.stderr.isTTY && !flags.json;
  let shown = false;
  const clear = (): void => {
    if (shown) process.stderr.write("\r\x1b[2K");
    shown = false;
  };
  let result: Awaited<ReturnType<typeof importImage>>;
  try {
    result = await importImage({
      file: flags.file,
      ...(flags.name !== undefined ? { name: flags.name } : {}),
      imageDir: flags.imageDir,
      uidBase: flags.uidBase,
      onProgress: (step) => {
        if (!tty) return;
        process.stderr.write(`\r\x1b[2Kimage import: ${step}`);
        shown = true;
      },
    });
  } finally {
    clear();
  }
  const { meta, stats } = result;
  if (flags.json) {
    process.stdout.write(
      `${JSON.stringify(imageJson(result, { cached: result.cached, stats }), null, 2)}\n`,
    );
    return 0;
  }
  const name = result.names.join(",") || meta.name;
  const how = result.cached
    ? "already imported"
    : `imported in ${formatDuration((Date.now() - started) / 1000)}`;
  const source = meta.source
    ? ` (${meta.source.format}${meta.source.format === "rootfs" ? "" : `, ${meta.source.layers} layer${meta.source.layers === 1 ? "" : "s"}`})`
    : "";
  let notes = "";
  if (stats && stats.strippedSpecialBits > 0) {
    notes += `  note    setuid/setgid bits stripped from ${stats.strippedSpecialBits} file(s)\n`;
  }
  if (stats && stats.skippedFifos > 0) {
    notes += `  note    ${stats.skippedFifos} FIFO(s) skipped (a program can make one at run time)\n`;
  }
  if (stats && stats.skippedAufsMetadata > 0) {
    notes += `  note    ${stats.skippedAufsMetadata} aufs metadata entr${stats.skippedAufsMetadata === 1 ? "y" : "ies"} skipped\n`;
  }
  process.stdout.write(
    `image ${name} ${how} from ${meta.source?.file ?? flags.file}${source}\n` +
      `  key     ${meta.key}\n` +
      `  digest  ${meta.digest}\n` +
      `  size    ${formatBytes(meta.sizeBytes)} (${meta.files} files)\n` +
      `  rootfs  ${result.rootfs}\n${notes}`,
  );
  return 0;
}

export async function imageLsCommand(flags: { imageDir: string; json: boolean }): Promise<number> {
  const images = await listImages(flags.imageDir);
  if (flags.json) {
    process.stdout.write(
      `${JSON.stringify(
        images.map((img) => imageJson(img)),
        null,
        2,
      )}\n`,
    );
    return 0;
  }
  const rows = [["NAME", "KEY", "DIGEST", "SIZE", "CREATED"]];
  for (const img of images) {
    rows.push([
      img.names.length > 0 ? img.names.join(",") : `<none> (was ${img.meta.name})`,
      img.meta.key,
      img.meta.digest.slice(0, "sha256:".length + 12),
      formatBytes(img.meta.sizeBytes),
      img.meta.created.replace("T", " ").slice(0, 16),
    ]);
  }
  process.stdout.write(`${formatTable(rows)}\n`);
  return 0;
}

export async function imageRmCommand(flags: { imageDir: string; ref: string }): Promise<number> {
  const { image, untagged } = await removeImage(flags.imageDir, flags.ref);
  const id = `key ${image.meta.key}, ${image.meta.digest.slice(0, 19)}`;
  if (untagged !== null) {
    process.stdout.write(
      `removed the name ${untagged}; the image (${id}) stays, named ${image.names.join(",")}\n`,
    );
    return 0;
  }
  const name = image.names.length > 0 ? image.names.join(",") : image.meta.name;
  process.stdout.write(`removed image ${name} (${id})\n`);
  return 0;
}
