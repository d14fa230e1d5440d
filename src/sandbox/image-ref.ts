/**
 * From an image reference (name, key prefix or digest prefix) to what a sandbox needs: the
 * shifted root filesystem, its digest and its environment. Checks that the image fits this
 * configuration's id range, and that the sandbox's ids can reach it at all.
 */
import { stat } from "node:fs/promises";
import path from "node:path";
import type { CorralConfig } from "../core/config.js";
import { CorralError } from "../core/errors.js";
import type { ImageRef } from "../core/sandbox.js";
import { type ImageMeta, resolveImage } from "../images/store.js";

function rebuildHint(ref: string, meta: ImageMeta): string {
  // An imported image is made again from its archive, a built one from its recipe.
  if (meta.source) return `import ${meta.source.file} again with \`corral image import\``;
  return ref === "default" || meta.name === "default"
    ? "run `corral image build`"
    : `run \`corral image build\` with the recipe of ${meta.name}`;
}

export async function loadImageRef(config: CorralConfig, ref: string): Promise<ImageRef> {
  const image = await resolveImage(config.imageDir, ref);
  const { meta } = image;
  if (meta.uidBase !== config.ids.base) {
    throw new CorralError(
      "image_not_built",
      `image "${ref}" was shifted to uid base ${meta.uidBase}, but this configuration uses ${config.ids.base}`,
      rebuildHint(ref, meta),
    );
  }
  let rootStat: Awaited<ReturnType<typeof stat>>;
  try {
    rootStat = await stat(image.rootfs);
  } catch {
    throw new CorralError(
      "image_not_built",
      `image "${ref}" has no root filesystem at ${image.rootfs}`,
      rebuildHint(ref, meta),
    );
  }
  if (rootStat.uid !== config.ids.base) {
    throw new CorralError(
      "image_not_built",
      `image "${ref}" is not shifted to uid ${config.ids.base} (its root is owned by ${rootStat.uid})`,
      rebuildHint(ref, meta),
    );
  }
  // The sandbox's root (a host uid of the mapped range) must be able to traverse every
  // directory above the image: a 0700 directory there makes runc fail with EACCES.
  for (let dir = path.dirname(image.rootfs); ; dir = path.dirname(dir)) {
    const s = await stat(dir);
    if ((s.mode & 0o001) === 0) {
      throw new CorralError(
        "prerequisite_missing",
        `${dir} is not searchable by the sandboxes' ids (mode ${(s.mode & 0o777).toString(8)})`,
        `chmod o+x ${dir}`,
      );
    }
    if (dir === path.dirname(dir)) break;
  }
  const proc = meta.process;
  return {
    name: meta.name,
    digest: meta.digest,
    rootfs: image.rootfs,
    env: { ...meta.env },
    ...(proc?.entrypoint ? { entrypoint: [...proc.entrypoint] } : {}),
    ...(proc?.cmd ? { cmd: [...proc.cmd] } : {}),
    ...(proc?.workingDir ? { workingDir: proc.workingDir } : {}),
  };
}
