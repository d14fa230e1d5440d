import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { deviceNumbers, digestTree, manifestLine } from "../../src/images/digest.js";

let base: string;

beforeEach(async () => {
  base = await mkdtemp(path.join(tmpdir(), "corral-digest-"));
});
afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

/** The same small tree, its entries created in the order given. */
async function makeTree(root: string, order: "forward" | "reverse"): Promise<void> {
  await mkdir(root);
  const steps: (() => Promise<unknown>)[] = [
    () => mkdir(path.join(root, "etc")),
    () => mkdir(path.join(root, "usr/bin"), { recursive: true }),
    () => writeFile(path.join(root, "usr/bin/tool"), "#!/bin/sh\necho tool\n", { mode: 0o755 }),
    () => writeFile(path.join(root, "big"), Buffer.alloc(600 * 1024, 7)),
    () => symlink("usr/bin", path.join(root, "bin")),
  ];
  const ordered = order === "forward" ? steps : [...steps.slice(0, 2), ...steps.slice(2).reverse()];
  for (const step of ordered) await step();
  await writeFile(path.join(root, "etc/hosts"), "127.0.0.1 localhost\n");
  await chmod(path.join(root, "etc/hosts"), 0o644);
}

describe("content digest", () => {
  it("is deterministic and independent of creation order", async () => {
    await makeTree(path.join(base, "a"), "forward");
    await makeTree(path.join(base, "b"), "reverse");
    const a = await digestTree(path.join(base, "a"));
    const b = await digestTree(path.join(base, "b"));
    expect(a.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(b.digest).toBe(a.digest);
    expect((await digestTree(path.join(base, "a"), { concurrency: 1 })).digest).toBe(a.digest);
    expect(a.files).toBe(8);
  });

  it("changes when one byte of a file changes", async () => {
    const root = path.join(base, "t");
    await makeTree(root, "forward");
    const before = await digestTree(root);
    const big = Buffer.alloc(600 * 1024, 7);
    big[300_000] = 8;
    await writeFile(path.join(root, "big"), big);
    expect((await digestTree(root)).digest).not.toBe(before.digest);
  });

  it("changes when a mode changes", async () => {
    const root = path.join(base, "t");
    await makeTree(root, "forward");
    const before = await digestTree(root);
    await chmod(path.join(root, "usr/bin/tool"), 0o4755);
    expect((await digestTree(root)).digest).not.toBe(before.digest);
  });

  it("changes when a link target changes", async () => {
    const root = path.join(base, "t");
    await makeTree(root, "forward");
    const before = await digestTree(root);
    await rm(path.join(root, "bin"));
    await symlink("usr/sbin", path.join(root, "bin"));
    expect((await digestTree(root)).digest).not.toBe(before.digest);
  });

  it("records owners relative to the id base", () => {
    const stats = {
      mode: 0o100644,
      uid: 100_000_005,
      gid: 100_000_000,
      size: 3,
      rdev: 0,
      type: "f" as const,
    };
    expect(manifestLine("/etc/x", stats, { sha256: "ab" }, 100_000_000)).toBe(
      '"/etc/x" f 0644 5 0 3 ab',
    );
    expect(manifestLine("/etc/x", { ...stats, uid: 5, gid: 0 }, { sha256: "ab" })).toBe(
      '"/etc/x" f 0644 5 0 3 ab',
    );
  });

  it("splits device numbers as glibc does", () => {
    expect(deviceNumbers(0x0103)).toEqual({ major: 1, minor: 3 }); // /dev/null
    expect(deviceNumbers(0x0500)).toEqual({ major: 5, minor: 0 }); // /dev/tty
    expect(deviceNumbers(0x1_0000_0000 * 0x12 + 0x00a3_45_67)).toEqual({
      major: 0x345,
      minor: 0x120_0a67,
    });
  });
});
