import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { cgroupDirsNamed, cgroupDirsWithPrefix } from "../../src/sandbox/runtime/cgroups.js";

const roots: string[] = [];
afterEach(() => {
  for (const r of roots.splice(0)) rmSync(r, { recursive: true, force: true });
});

/** A fake cgroup root: v1 (a directory per hierarchy) or v2 (unified). */
function fakeRoot(version: 1 | 2, dirs: string[]): string {
  const root = mkdtempSync(path.join(tmpdir(), "corral-cg-"));
  roots.push(root);
  if (version === 2) writeFileSync(path.join(root, "cgroup.controllers"), "cpu memory pids\n");
  for (const d of dirs) mkdirSync(path.join(root, d), { recursive: true });
  return root;
}

const name = "corral-0123456789-sb-0123456789ab";

describe("cgroupDirsNamed", () => {
  it("v1: the name under every hierarchy that has it (a symlinked hierarchy too), as the prefix scan finds", async () => {
    const root = fakeRoot(1, [
      `memory/${name}`,
      `pids/${name}`,
      "cpu,cpuacct",
      `cpu,cpuacct/${name}`,
      "blkio",
      "memory/other",
      `memory/${name}-not-this/x`,
    ]);
    symlinkSync("cpu,cpuacct", path.join(root, "cpu"));
    const found = (await cgroupDirsNamed(name, root)).sort();
    expect(found).toEqual(
      ["cpu", "cpu,cpuacct", "memory", "pids"].map((h) => path.join(root, h, name)).sort(),
    );
    const byPrefix = (await cgroupDirsWithPrefix(name, root)).filter(
      (d) => path.basename(d) === name,
    );
    expect(byPrefix.sort()).toEqual(found);
  });

  it("v2: the one directory, or nothing", async () => {
    const root = fakeRoot(2, [name, "other"]);
    expect(await cgroupDirsNamed(name, root)).toEqual([path.join(root, name)]);
    expect(await cgroupDirsNamed("corral-x-sb-none", root)).toEqual([]);
  });

  it("no cgroup root: nothing", async () => {
    expect(await cgroupDirsNamed(name, "/nonexistent/cgroup")).toEqual([]);
  });

  it("refuses what is not one name", async () => {
    await expect(cgroupDirsNamed("a/b")).rejects.toThrow(/not a cgroup name/);
    await expect(cgroupDirsNamed("")).rejects.toThrow(/not a cgroup name/);
  });
});
