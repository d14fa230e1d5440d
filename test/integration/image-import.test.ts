/**
 * `corral image import` end to end: real archives (written by the test), the real CLI,
 * the imported image run in a real sandbox; hostile archives refused with nothing left
 * behind, inside the image cache or outside it.
 */
import { execFileSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CorralConfig, loadConfig } from "../../src/core/config.js";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import { type Host, openHost } from "../../src/sandbox/host.js";
import { loadImageRef } from "../../src/sandbox/image-ref.js";
import { Sandbox } from "../../src/sandbox/sandbox.js";
import { corral, expectOneLineError } from "../helpers/cli.js";
import { testDataDir } from "../helpers/sandbox.js";
import { dockerSaveArchive, ociArchive, type TarSpec, tarArchive } from "../helpers/tar-writer.js";
import { buildTinybox } from "../helpers/tinybox.js";

let dataDir: string;
let imageDir: string;
let config: CorralConfig;
let host: Host;
let tinybox: Buffer;
let outside: string;

beforeAll(async () => {
  dataDir = testDataDir("image-import");
  imageDir = path.join(dataDir, "images");
  config = loadConfig({ dataDir, imageDir });
  host = await openHost(config);
  tinybox = readFileSync(buildTinybox(dataDir));
  // A directory outside the staging area that hostile archives aim at.
  outside = path.join(dataDir, "outside");
  mkdirSync(outside);
  writeFileSync(path.join(outside, "keep"), "keep\n");
});
afterAll(() => host?.close());

const cli = (args: string[]) => corral(["--data-dir", dataDir, "--image-dir", imageDir, ...args]);

function archive(name: string, bytes: Buffer): string {
  const file = path.join(dataDir, name);
  writeFileSync(file, bytes);
  return file;
}

/** Run argv in a fresh sandbox of the image; stdout, or throw with stderr. */
async function runIn(image: string, argv: string[]): Promise<string> {
  const sandbox = await Sandbox.create(host, {
    image: await loadImageRef(config, image),
    limits: { ...DEFAULT_LIMITS, timeoutMs: 10_000 },
  });
  try {
    const r = await sandbox.exec({ argv, timeoutMs: 10_000, outputCapBytes: 1 << 20 });
    if (r.exitCode !== 0)
      throw new Error(`${argv.join(" ")}: exit ${r.exitCode}: ${r.stderr.bytes().toString()}`);
    return r.stdout.bytes().toString();
  } finally {
    await sandbox.destroy();
  }
}

/** What the image cache holds besides its names directory. */
function cacheEntries(): string[] {
  try {
    return readdirSync(imageDir).filter((n) => n !== "names" && n !== "logs");
  } catch {
    return [];
  }
}

function names(): string[] {
  try {
    return readdirSync(path.join(imageDir, "names"));
  } catch {
    return [];
  }
}

const LAYER_1: TarSpec[] = [
  { name: "tinybox", data: Buffer.alloc(0), mode: 0o755 }, // replaced below
  { name: "data/", type: "dir" },
  { name: "data/a.txt", data: "a\n" },
  { name: "data/b.txt", data: "b\n" },
  { name: "opq/", type: "dir" },
  { name: "opq/old.txt", data: "old\n" },
  { name: "opq/sub/", type: "dir" },
  { name: "opq/sub/deep.txt", data: "deep\n" },
  { name: "usr/", type: "dir" },
  { name: "usr/bin/", type: "dir" },
  { name: "usr/bin/suid", data: "x", mode: 0o4755 },
  { name: "etc/", type: "dir" },
  { name: "etc/hard-source", data: "linked\n", uid: 1000, gid: 1000 },
];
const LAYER_2: TarSpec[] = [
  { name: "data/", type: "dir" },
  { name: "data/.wh.a.txt" },
  { name: "data/c.txt", data: "c\n" },
  { name: "opq/", type: "dir" },
  // Written before the opaque marker of the same layer: it must survive it.
  { name: "opq/new.txt", data: "new\n" },
  { name: "opq/.wh..wh..opq" },
  { name: "etc/hard-link", type: "hardlink", linkname: "etc/hard-source" },
  { name: "run/", type: "dir" },
  { name: "run/fifo", type: "fifo" },
];

function layers(): TarSpec[][] {
  const first = LAYER_1.map((e) => (e.name === "tinybox" ? { ...e, data: tinybox } : e));
  return [first, LAYER_2];
}

describe("corral image import", () => {
  let digest = "";

  it("a two-layer docker save archive: whiteouts and opaque directories apply, setuid is stripped", async () => {
    const file = archive(
      "two-layers.tar",
      dockerSaveArchive(layers(), { env: ["PATH=/", "GREETING=hi"] }),
    );
    const r = await cli(["image", "import", file, "--name", "two-layers"]);
    expect(r.stderr).not.toMatch(/refusing|failed/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(
      /^image two-layers imported in \d+s from two-layers\.tar \(docker-save, 2 layers\)\n/,
    );
    expect(r.stdout).toMatch(/setuid\/setgid bits stripped from 1 file/);
    expect(r.stdout).toMatch(/1 FIFO/);
    digest = /digest {2}(sha256:[0-9a-f]{64})/.exec(r.stdout)?.[1] ?? "";
    expect(digest).not.toBe("");

    const ls = await cli(["image", "ls", "--json"]);
    const listed = JSON.parse(ls.stdout) as { names: string[]; digest: string; source: unknown }[];
    expect(listed).toEqual([
      expect.objectContaining({
        names: ["two-layers"],
        digest,
        source: expect.objectContaining({ kind: "import", format: "docker-save", layers: 2 }),
      }),
    ]);

    expect(await runIn("two-layers", ["/tinybox", "ls", "/data"])).toBe("b.txt\nc.txt\n");
    expect(await runIn("two-layers", ["/tinybox", "ls", "/opq"])).toBe("new.txt\n");
    // Root inside owns what root owned in the archive; uid 1000 stays 1000; no setuid.
    expect(await runIn("two-layers", ["/tinybox", "stat", "/usr/bin/suid"])).toBe("0 0 755\n");
    expect(await runIn("two-layers", ["/tinybox", "stat", "/etc/hard-link"])).toBe(
      "1000 1000 644\n",
    );
    expect(await runIn("two-layers", ["/tinybox", "cat", "/etc/hard-link"])).toBe("linked\n");
    expect(await runIn("two-layers", ["/tinybox", "ls", "/run"])).toBe("");
    const env = await runIn(digest, ["/tinybox", "env"]);
    expect(env).toMatch(/^GREETING=hi$/m);
    expect(env).toMatch(/^PATH=\/$/m);
  });

  it("the same layers as an OCI archive with gzip blobs give the same digest; a re-import is a cache hit", async () => {
    const file = archive(
      "two-layers-oci.tar",
      ociArchive(layers(), { env: ["PATH=/", "GREETING=hi"] }),
    );
    const r = await cli(["image", "import", file, "--name", "two-layers-oci", "--json"]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ cached: false, digest, names: ["two-layers-oci"] });
    expect(j.source).toMatchObject({ format: "oci", layers: 2 });
    const again = await cli(["image", "import", file, "--name", "oci-again", "--json"]);
    expect(JSON.parse(again.stdout)).toMatchObject({ cached: true, digest });
    // An image imported by an older Corral (no Entrypoint/Cmd/WorkingDir kept) is imported
    // again, in place, rather than served without them.
    const metaFile = path.join(imageDir, j.key, "meta.json");
    const { process: _kept, ...older } = JSON.parse(readFileSync(metaFile, "utf8"));
    writeFileSync(metaFile, JSON.stringify(older));
    const redone = await cli(["image", "import", file, "--name", "oci-again", "--json"]);
    expect(JSON.parse(redone.stdout)).toMatchObject({
      cached: false,
      key: j.key,
      digest,
      process: { entrypoint: null, cmd: null, workingDir: null },
    });
    // Two names, one image: rm of one name leaves the image under the other, as docker rmi.
    const before = cacheEntries();
    const untag = await cli(["image", "rm", "oci-again"]);
    expect(untag).toMatchObject({ code: 0, stderr: "" });
    expect(untag.stdout).toMatch(
      /^removed the name oci-again; the image \(key [0-9a-f]{16}, sha256:[0-9a-f]{12}\) stays, named two-layers-oci\n$/,
    );
    expect(names()).toContain("two-layers-oci");
    expect(names()).not.toContain("oci-again");
    expect(cacheEntries()).toEqual(before);
    const gone = await cli(["image", "rm", "two-layers-oci"]);
    expect(gone.stdout).toMatch(/^removed image two-layers-oci \(key /);
    expect(names()).not.toContain("two-layers-oci");
    expect(cacheEntries().length).toBe(before.length - 1);
  });

  it("a gzip-compressed root filesystem tarball (tar -C rootfs -czf x.tar.gz .) is one layer", async () => {
    // Made as a user makes one: GNU tar's own "./" root entry is not a skipped entry.
    const tree = path.join(dataDir, "rootfs-tree");
    mkdirSync(path.join(tree, "etc"), { recursive: true });
    writeFileSync(path.join(tree, "tinybox"), tinybox, { mode: 0o755 });
    symlinkSync("/proc/self/mounts", path.join(tree, "etc/mtab"));
    const file = path.join(dataDir, "rootfs.tar.gz");
    execFileSync("tar", ["-C", tree, "-czf", file, "."]);
    const r = await cli(["image", "import", file]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^image rootfs imported in \d+s from rootfs\.tar\.gz \(rootfs\)\n/);
    expect(r.stdout).not.toMatch(/note/);
    // The absolute symlink resolves inside the sandbox: its /proc, not the host's.
    const mounts = await runIn("rootfs", ["/tinybox", "cat", "/etc/mtab"]);
    expect(mounts).toMatch(/^\S+ \/ overlay /m);
    expect(mounts).toMatch(/^proc \/proc proc /m);
    // /work exists for code to run in, though the archive had none.
    expect(await runIn("rootfs", ["/tinybox", "pwd"])).toBe("/work\n");
  });

  it("without --name, a docker save archive is named after its first RepoTag, an OCI one after its reference", async () => {
    const tiny = [[{ name: "tinybox", data: tinybox, mode: 0o755 }]];
    const saved = archive("save.tar", dockerSaveArchive(tiny, { repoTag: "mini:layered" }));
    const r = await cli(["image", "import", saved]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^image mini:layered imported in \d+s from save\.tar /);
    expect(names()).toContain("mini:layered");
    const run = await cli(["run", "--image", "mini:layered", "--", "/tinybox", "pwd"]);
    expect(run).toMatchObject({ code: 0, stdout: "/work\n" });
    // A cache hit keeps the archive's name.
    rmSync(path.join(imageDir, "names", "mini:layered"));
    expect((await cli(["image", "import", saved])).stdout).toMatch(/^image mini:layered already/);
    // Docker's own OCI export: containerd's whole reference; the tag latest is dropped.
    const oci = archive(
      "export.tar",
      ociArchive(tiny, {
        annotations: {
          "io.containerd.image.name": "docker.io/library/mini:latest",
          "org.opencontainers.image.ref.name": "latest",
        },
      }),
    );
    expect((await cli(["image", "import", oci])).stdout).toMatch(/^image mini imported/);
    expect((await cli(["run", "--image", "mini:latest", "--", "/tinybox", "pwd"])).code).toBe(0);
    // A bare OCI tag goes after the file's name.
    const tagged = archive(
      "tool.tar",
      ociArchive(tiny, {
        annotations: { "org.opencontainers.image.ref.name": "1.0" },
        env: ["A=1"],
      }),
    );
    expect((await cli(["image", "import", tagged])).stdout).toMatch(/^image tool:1\.0 imported/);
    for (const n of ["mini:layered", "mini", "tool:1.0"])
      expect((await cli(["image", "rm", n])).code).toBe(0);
  });

  it("image rm removes an imported image; nothing of it is left", async () => {
    const before = cacheEntries().length;
    const r = await cli(["image", "rm", "rootfs"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^removed image rootfs/);
    expect(cacheEntries().length).toBe(before - 1);
    expect(names()).not.toContain("rootfs");
    const run = await cli(["run", "--image", "rootfs", "--lang", "shell", "-c", "true"]);
    expectOneLineError(
      run,
      /image "rootfs" is not built: run `corral image build RECIPE.yaml` with a recipe named rootfs, or `corral image import FILE --name rootfs` \(`corral image ls` lists the images there are\)/,
    );
    expectOneLineError(
      await cli(["image", "rm", "rootfs"]),
      /image "rootfs" is not built: .*corral image import/,
    );
  });
});

describe("hostile archives are refused, and nothing is left behind", () => {
  const abs = () => outside;
  const cases: [string, () => Buffer, RegExp][] = [
    [
      "an absolute path",
      () => tarArchive([{ name: "/etc/evil", data: "x" }]),
      /"\/etc\/evil": its path is an absolute path/,
    ],
    [
      "a .. path",
      () => tarArchive([{ name: "a/../../evil", data: "x" }]),
      /"a\/..\/..\/evil": its path contains "\.\."/,
    ],
    [
      "a write through an absolute symlink",
      () =>
        tarArchive([
          { name: "escape", type: "symlink", linkname: abs() },
          { name: "escape/pwned", data: "x" },
        ]),
      /"escape\/pwned": escape is a symbolic link in the image: nothing may be written through it/,
    ],
    [
      "a write through a relative symlink that climbs out",
      () =>
        tarArchive([
          { name: "d/", type: "dir" },
          { name: "d/up", type: "symlink", linkname: `../../../../../../../../..${abs()}` },
          { name: "d/up/pwned", data: "x" },
        ]),
      /d\/up is a symbolic link in the image/,
    ],
    [
      "a symlink in layer 1 written through by layer 2",
      () =>
        dockerSaveArchive([
          [{ name: "escape", type: "symlink", linkname: abs() }],
          [{ name: "escape/pwned", data: "x" }],
        ]),
      /layer 2\/2 entry "escape\/pwned": escape is a symbolic link/,
    ],
    [
      "a whiteout through a symlink",
      () =>
        dockerSaveArchive([
          [{ name: "escape", type: "symlink", linkname: abs() }],
          [{ name: "escape/.wh.keep" }],
        ]),
      /escape is a symbolic link/,
    ],
    [
      "an opaque marker through a symlink",
      () =>
        dockerSaveArchive([
          [{ name: "escape", type: "symlink", linkname: abs() }],
          [{ name: "escape/.wh..wh..opq" }],
        ]),
      /escape is a symbolic link in the image: it cannot be made opaque/,
    ],
    [
      "a hard link out through ..",
      () => tarArchive([{ name: "h", type: "hardlink", linkname: "../../../../etc/passwd" }]),
      /its hard link target contains "\.\."/,
    ],
    [
      "an absolute hard link",
      () => tarArchive([{ name: "h", type: "hardlink", linkname: `${abs()}/keep` }]),
      /its hard link target is an absolute path/,
    ],
    [
      "a hard link through a symlink",
      () =>
        tarArchive([
          { name: "out", type: "symlink", linkname: abs() },
          { name: "h", type: "hardlink", linkname: "out/keep" },
        ]),
      /"h": out is a symbolic link in the image/,
    ],
    [
      "a hard link to nothing",
      () => tarArchive([{ name: "h", type: "hardlink", linkname: "missing" }]),
      /its hard link target missing is not in the image/,
    ],
    [
      "a character device",
      () => tarArchive([{ name: "dev/mem", type: "char", devmajor: 1, devminor: 1 }]),
      /"dev\/mem": it is a character device \(1,1\); images may not hold device nodes/,
    ],
    [
      "a block device",
      () => tarArchive([{ name: "sda", type: "block", devmajor: 8, devminor: 0 }]),
      /it is a block device/,
    ],
    [
      "a docker save manifest naming a layer outside the archive",
      () =>
        tarArchive([
          { name: "c.json", data: "{}" },
          {
            name: "manifest.json",
            data: JSON.stringify([{ Config: "c.json", Layers: ["../../layer.tar"] }]),
          },
        ]),
      /manifest.json's layer 1 "..\/..\/layer.tar" contains "\.\."/,
    ],
    [
      "a layer that does not match its diff id",
      () => {
        const good = dockerSaveArchive([[{ name: "f", data: "1" }]]);
        // Same size, other content: the config's diff id no longer matches.
        const i = good.indexOf(Buffer.from("1\0\0\0"), 1024);
        const bad = Buffer.from(good);
        bad[i] = 0x32;
        return bad;
      },
      /layer 1\/1 does not match its diff id/,
    ],
    [
      "a file that is not an archive",
      () => Buffer.from("hello\n".repeat(200)),
      /not a tar archive/,
    ],
    [
      "garbage with terminal escapes where a header's checksum would be",
      () => {
        const b = Buffer.alloc(1024);
        b.write("hello", 0, "latin1");
        Buffer.from([0x1b, 0x5b, 0x33, 0x31, 0x6d, 0x88, 0xe9, 0]).copy(b, 148);
        return b;
      },
      /not a tar archive: header checksum is not an octal number: "\\x1b\[31m\\x88\\xe9"$/m,
    ],
    [
      "a zstd archive",
      () => Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0]),
      /zstd-compressed; only gzip/,
    ],
  ];

  it.each(cases)("%s", async (_what, make, message) => {
    const before = cacheEntries();
    const file = archive("hostile.tar", make());
    const r = await cli(["image", "import", file, "--name", "hostile"]);
    expectOneLineError(r, message);
    expect(r.stderr).toMatch(/^corral: refusing to import hostile\.tar: /);
    // Nothing of the archive reaches the terminal raw: no control character but the newline.
    const controls = [...r.stderr.slice(0, -1)].filter((c) => {
      const cp = c.codePointAt(0) ?? 0;
      return cp < 0x20 || (cp >= 0x7f && cp < 0xa0);
    });
    expect(controls).toEqual([]);
    // No image, no staging directory, no name; the outside directory is as it was.
    expect(cacheEntries()).toEqual(before);
    expect(names()).not.toContain("hostile");
    expect(readdirSync(outside)).toEqual(["keep"]);
    expect(readFileSync(path.join(outside, "keep"), "utf8")).toBe("keep\n");
    expect(existsSync("/etc/evil")).toBe(false);
    expect(existsSync(path.join(dataDir, "evil"))).toBe(false);
  });

  it("bad input: a missing file, a bad name", async () => {
    expectOneLineError(
      await cli(["image", "import", path.join(dataDir, "nope.tar")]),
      /cannot read .*nope\.tar: ENOENT/,
    );
    const file = archive("ok.tar", tarArchive([{ name: "f", data: "x" }]));
    expectOneLineError(
      await cli(["image", "import", file, "--name", "Bad Name"]),
      /"Bad Name" is not a valid image name/,
    );
  });

  it("leaves no staging directory even when refused mid-layer (GNU tar's own archive)", async () => {
    // A real archive from GNU tar: many entries, then a device node near the end.
    const dir = path.join(dataDir, "gnu-tree");
    mkdirSync(path.join(dir, "lots"), { recursive: true });
    for (let i = 0; i < 200; i++) writeFileSync(path.join(dir, "lots", `f${i}`), `${i}\n`);
    execFileSync("mknod", [path.join(dir, "zz-null"), "c", "1", "3"]);
    const file = path.join(dataDir, "gnu.tar");
    execFileSync("tar", ["-cf", file, "-C", dir, "lots", "zz-null"]);
    const before = cacheEntries();
    const r = await cli(["image", "import", file, "--name", "gnu"]);
    expectOneLineError(r, /"zz-null": it is a character device \(1,3\)/);
    expect(cacheEntries()).toEqual(before);
  });
});
