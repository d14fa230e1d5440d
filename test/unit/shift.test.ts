import {
  chmod,
  chown,
  link,
  lstat,
  mkdir,
  mkdtemp,
  rm,
  symlink,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CorralError } from "../../src/core/errors.js";
import { digestTree } from "../../src/images/digest.js";
import { isShifted, shiftTree } from "../../src/images/shift.js";

const BASE = 100_000_000;
const asRoot = process.getuid?.() === 0;
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "corral-shift-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function makeTree(): Promise<string> {
  const root = path.join(dir, "rootfs");
  await mkdir(path.join(root, "usr/bin"), { recursive: true });
  await mkdir(path.join(root, "var/mail"), { recursive: true });
  await writeFile(path.join(root, "usr/bin/su"), "binary");
  await chmod(path.join(root, "usr/bin/su"), 0o4755);
  await writeFile(path.join(root, "usr/bin/chage"), "binary");
  await chown(path.join(root, "usr/bin/chage"), 0, 42);
  await chmod(path.join(root, "usr/bin/chage"), 0o2755);
  await writeFile(path.join(root, "var/mail/user"), "mail");
  await chown(path.join(root, "var/mail/user"), 5, 8);
  await chown(path.join(root, "var/mail"), 0, 8);
  await chmod(path.join(root, "var/mail"), 0o2775);
  await link(path.join(root, "usr/bin/su"), path.join(root, "usr/bin/su-hardlink"));
  // A link that points outside the tree: it must be lchown'd itself, never followed.
  await writeFile(path.join(dir, "outside"), "host file");
  await symlink(path.join(dir, "outside"), path.join(root, "escape"));
  return root;
}

describe.skipIf(!asRoot)("shiftTree (needs root to chown)", () => {
  it("moves every owner and group by the base and keeps setuid/setgid bits", async () => {
    const root = await makeTree();
    const digestBefore = await digestTree(root);
    const result = await shiftTree(root, BASE);
    const st = async (p: string) => lstat(path.join(root, p));
    expect((await st("")).uid).toBe(BASE);
    expect((await st("usr/bin/su")).uid).toBe(BASE);
    expect((await st("usr/bin/su")).mode & 0o7777).toBe(0o4755);
    expect((await st("usr/bin/chage")).gid).toBe(BASE + 42);
    expect((await st("usr/bin/chage")).mode & 0o7777).toBe(0o2755);
    expect((await st("var/mail/user")).uid).toBe(BASE + 5);
    expect((await st("var/mail/user")).gid).toBe(BASE + 8);
    expect((await st("var/mail")).mode & 0o7777).toBe(0o2775);
    // The hard link shares the inode: shifted once, not twice.
    expect((await st("usr/bin/su-hardlink")).uid).toBe(BASE);
    expect((await st("escape")).uid).toBe(BASE);
    expect((await lstat(path.join(dir, "outside"))).uid).toBe(0);
    expect(result.specialModes).toBe(3);
    expect(await isShifted(root)).toBe(true);
    // The digest records ids as the sandbox sees them: the same before and after.
    expect((await digestTree(root, { idBase: BASE })).digest).toBe(digestBefore.digest);
  });

  it("refuses to shift a tree twice", async () => {
    const root = await makeTree();
    await shiftTree(root, BASE);
    await expect(shiftTree(root, BASE)).rejects.toThrowError(/already shifted/);
  });

  it("refuses ids outside the sandbox range", async () => {
    const root = await makeTree();
    await chown(path.join(root, "usr/bin/su"), 70_000, 0);
    const err = await shiftTree(root, BASE).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CorralError);
    // su and su-hardlink are one inode: the walk reports whichever name it meets first
    // (directory order is the file system's).
    expect((err as CorralError).message).toMatch(
      /^\/usr\/bin\/su(-hardlink)? in the image is owned by 70000:0, outside the sandbox's ids 0\.\.65535$/,
    );
  });
});

describe("shiftTree arguments", () => {
  it.each([0, 1000, 1.5, 2 ** 32])("rejects base %d", async (base) => {
    await expect(shiftTree(dir, base)).rejects.toThrowError(/uid base .* is not usable/);
  });
});
