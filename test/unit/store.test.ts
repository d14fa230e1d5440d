import { mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CorralError } from "../../src/core/errors.js";
import {
  type ImageMeta,
  listImages,
  removeImage,
  resolveImage,
  setImageName,
  writeImageMeta,
} from "../../src/images/store.js";

let imageDir: string;

function meta(key: string, digestHex: string, name: string, created: string): ImageMeta {
  return {
    version: 1,
    status: "complete",
    key,
    recipeKey: key.padEnd(64, "0"),
    name,
    digest: `sha256:${digestHex.padEnd(64, "0")}`,
    created,
    mirror: "http://mirror.invalid/debian",
    suite: "bookworm",
    architecture: "amd64",
    packages: [],
    setup: [],
    env: { PATH: "/usr/bin:/bin" },
    uidBase: 100_000_000,
    shifted: true,
    sizeBytes: 1000,
    files: 3,
    buildSeconds: 1,
  };
}

async function addImage(m: ImageMeta): Promise<void> {
  await mkdir(path.join(imageDir, m.key, "rootfs/etc"), { recursive: true });
  await writeImageMeta(path.join(imageDir, m.key, "meta.json"), m);
}

async function errorOf(p: Promise<unknown>): Promise<CorralError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CorralError);
  return err as CorralError;
}

beforeEach(async () => {
  imageDir = await mkdtemp(path.join(tmpdir(), "corral-store-"));
  await addImage(meta("aaaa1111bbbb2222", "1234abcd99", "default", "2026-01-02T00:00:00Z"));
  await addImage(meta("cccc3333dddd4444", "1234abcd55", "default", "2026-01-01T00:00:00Z"));
  await addImage(meta("eeee5555ffff6666", "77770000", "extra", "2026-01-03T00:00:00Z"));
  await setImageName(imageDir, "default", "aaaa1111bbbb2222");
  await setImageName(imageDir, "extra", "eeee5555ffff6666");
  // Not images: a build in progress and a directory without a complete meta.json.
  await mkdir(path.join(imageDir, ".tmp-0123456789abcdef-12345678/rootfs"), { recursive: true });
  await mkdir(path.join(imageDir, "0123456789abcdef/rootfs"), { recursive: true });
});
afterEach(async () => {
  await rm(imageDir, { recursive: true, force: true });
});

describe("image store", () => {
  it("lists complete images, oldest first, with the names pointing at them", async () => {
    const images = await listImages(imageDir);
    expect(images.map((i) => [i.meta.key, i.names])).toEqual([
      ["cccc3333dddd4444", []],
      ["aaaa1111bbbb2222", ["default"]],
      ["eeee5555ffff6666", ["extra"]],
    ]);
    expect(images[0]?.rootfs).toBe(path.join(imageDir, "cccc3333dddd4444/rootfs"));
  });

  it("lists nothing for a missing image directory", async () => {
    expect(await listImages(path.join(imageDir, "nowhere"))).toEqual([]);
  });

  it.each([
    ["default", "aaaa1111bbbb2222"],
    ["extra", "eeee5555ffff6666"],
    ["cccc3333", "cccc3333dddd4444"],
    ["cccc3333dddd4444", "cccc3333dddd4444"],
    ["sha256:1234abcd9", "aaaa1111bbbb2222"],
    ["sha256:7777", "eeee5555ffff6666"],
    ["1234abcd55", "cccc3333dddd4444"],
  ])("resolves %s", async (ref, key) => {
    expect((await resolveImage(imageDir, ref)).meta.key).toBe(key);
  });

  it("takes NAME:TAG names; NAME:latest is NAME", async () => {
    await setImageName(imageDir, "mini:layered", "eeee5555ffff6666");
    await setImageName(imageDir, "tool:latest", "cccc3333dddd4444");
    expect((await readdir(path.join(imageDir, "names"))).sort()).toEqual([
      "default",
      "extra",
      "mini:layered",
      "tool",
    ]);
    expect((await resolveImage(imageDir, "mini:layered")).meta.key).toBe("eeee5555ffff6666");
    expect((await resolveImage(imageDir, "tool")).meta.key).toBe("cccc3333dddd4444");
    expect((await resolveImage(imageDir, "tool:latest")).meta.key).toBe("cccc3333dddd4444");
    expect((await resolveImage(imageDir, "default:latest")).meta.key).toBe("aaaa1111bbbb2222");
    expect((await errorOf(resolveImage(imageDir, "mini:other"))).code).toBe("image_not_built");
    await expect(setImageName(imageDir, "sha256:abcd", "eeee5555ffff6666")).rejects.toThrow(
      /not a valid image name/,
    );
    await expect(setImageName(imageDir, "a/b:1", "eeee5555ffff6666")).rejects.toThrow(
      /not a valid image name/,
    );
  });

  it("says how to build a missing default image", async () => {
    await rm(path.join(imageDir, "names/default"));
    const err = await errorOf(resolveImage(imageDir, "default"));
    expect(err.code).toBe("image_not_built");
    expect(err.message).toBe(
      'image "default" is not built: run `corral image build` (about 3 minutes)',
    );
  });

  it.each(["nosuch", "deadbeef00", "sha256:ffff", "abc"])(
    "reports %s as not built",
    async (ref) => {
      expect((await errorOf(resolveImage(imageDir, ref))).code).toBe("image_not_built");
    },
  );

  it("refuses an ambiguous prefix", async () => {
    const err = await errorOf(resolveImage(imageDir, "sha256:1234abcd"));
    expect(err.code).toBe("invalid_argument");
    expect(err.message).toBe(
      '"sha256:1234abcd" is ambiguous: it matches images cccc3333dddd4444, aaaa1111bbbb2222',
    );
  });

  it("removes an image and the names pointing at it", async () => {
    const removed = await removeImage(imageDir, "default");
    expect(removed.untagged).toBeNull();
    expect(removed.image.meta.key).toBe("aaaa1111bbbb2222");
    const left = await readdir(imageDir);
    expect(left).not.toContain("aaaa1111bbbb2222");
    expect(left.some((n) => n.startsWith(".rm-"))).toBe(false);
    expect(await readdir(path.join(imageDir, "names"))).toEqual(["extra"]);
    expect((await errorOf(resolveImage(imageDir, "default"))).code).toBe("image_not_built");
    // The superseded build of the same name is still there, by key.
    expect((await resolveImage(imageDir, "cccc3333")).meta.name).toBe("default");
  });

  it("removes only the name given while other names point at the image, as docker rmi", async () => {
    await setImageName(imageDir, "mini:layered", "eeee5555ffff6666");
    await setImageName(imageDir, "mini:v2", "eeee5555ffff6666");
    const first = await removeImage(imageDir, "extra");
    expect(first.untagged).toBe("extra");
    expect(first.image.names).toEqual(["mini:layered", "mini:v2"]);
    expect((await readdir(imageDir)).includes("eeee5555ffff6666")).toBe(true);
    expect((await errorOf(resolveImage(imageDir, "extra"))).code).toBe("image_not_built");
    expect((await removeImage(imageDir, "mini:layered")).untagged).toBe("mini:layered");
    // The last name takes the image with it.
    const last = await removeImage(imageDir, "mini:v2");
    expect(last.untagged).toBeNull();
    expect(await readdir(imageDir)).not.toContain("eeee5555ffff6666");
    expect(await readdir(path.join(imageDir, "names"))).toEqual(["default"]);
  });

  it("removes the image with all its names when given its key or digest", async () => {
    await setImageName(imageDir, "other", "eeee5555ffff6666");
    const removed = await removeImage(imageDir, "sha256:7777");
    expect(removed.untagged).toBeNull();
    expect(await readdir(imageDir)).not.toContain("eeee5555ffff6666");
    expect(await readdir(path.join(imageDir, "names"))).toEqual(["default"]);
  });

  it("says how to get a missing named image: build, import, or look", async () => {
    const err = await errorOf(resolveImage(imageDir, "nosuch"));
    expect(err.message).toBe(
      'image "nosuch" is not built: run `corral image build RECIPE.yaml` with a recipe named nosuch, or `corral image import FILE --name nosuch`',
    );
    expect(err.hint).toBe("`corral image ls` lists the images there are");
    // A tag only comes from an import.
    expect((await errorOf(resolveImage(imageDir, "mini:v9"))).message).toBe(
      'image "mini:v9" is not built: run `corral image import FILE --name mini:v9`',
    );
  });

  it("refuses to remove with an ambiguous reference", async () => {
    expect((await errorOf(removeImage(imageDir, "sha256:1234abcd"))).code).toBe("invalid_argument");
    expect((await listImages(imageDir)).length).toBe(3);
  });
});
