import { execFileSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { collectChangedFiles, isSafeRelativePath } from "../../src/sandbox/files-out.js";

const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), "corral-files-"));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("isSafeRelativePath", () => {
  it.each([
    ["a.txt", true],
    ["dir/ü.txt", true],
    ["../x", false],
    ["a/../../x", false],
    ["/etc/passwd", false],
    ["a//b", false],
    ["./a", false],
    ["a\0b", false],
    ["", false],
  ])("%j → %s", (p, ok) => expect(isSafeRelativePath(p)).toBe(ok));
});

describe("collectChangedFiles", () => {
  it("copies regular files only, never following links, skipping FIFOs and big files", async () => {
    const upper = tmp();
    const out = tmp();
    const secret = path.join(tmp(), "host-secret");
    writeFileSync(secret, "host secret");
    mkdirSync(path.join(upper, "sub"));
    writeFileSync(path.join(upper, "a.txt"), "hello");
    writeFileSync(path.join(upper, "sub", "b.bin"), Buffer.alloc(10, 1));
    writeFileSync(path.join(upper, "big"), Buffer.alloc(2000));
    symlinkSync(secret, path.join(upper, "link-to-host"));
    symlinkSync("/", path.join(upper, "root"));
    execFileSync("mkfifo", [path.join(upper, "pipe")]);
    const files = await collectChangedFiles(upper, { outDir: out, fileCapBytes: 1000 });
    expect(files.map((f) => [f.path, f.copied, f.skipped ?? null])).toEqual([
      ["a.txt", true, null],
      ["big", false, "too_large"],
      ["sub/b.bin", true, null],
    ]);
    expect(readFileSync(path.join(out, "a.txt"), "utf8")).toBe("hello");
    expect(readdirSync(out).sort()).toEqual(["a.txt", "sub"]);
    expect(existsSync(path.join(out, "link-to-host"))).toBe(false);
  });

  it("refuses to write through a symlink planted in the destination (and goes on)", async () => {
    const upper = tmp();
    const out = tmp();
    const victim = path.join(tmp(), "victim");
    writeFileSync(victim, "untouched");
    writeFileSync(path.join(upper, "x"), "payload");
    writeFileSync(path.join(upper, "y"), "fine");
    symlinkSync(victim, path.join(out, "x"));
    const files = await collectChangedFiles(upper, { outDir: out });
    expect(files.map((f) => [f.path, f.copied, f.skipped ?? null, f.error ?? null])).toEqual([
      ["x", false, "write_failed", "ELOOP"],
      ["y", true, null, null],
    ]);
    expect(readFileSync(victim, "utf8")).toBe("untouched");
    expect(readFileSync(path.join(out, "y"), "utf8")).toBe("fine");
  });

  it("takes nothing when /work itself was replaced by a link", async () => {
    const root = tmp();
    symlinkSync("/etc", path.join(root, "work"));
    expect(await collectChangedFiles(path.join(root, "work"))).toEqual([]);
  });
});

describe("hostile names and shapes in the layer", () => {
  it("a non-UTF-8 name cannot alias a link named U+FFFD: no host file is read", async () => {
    const upper = tmp();
    mkdirSync(Buffer.from([...Buffer.from(`${upper}/`), 0xff]) as unknown as string);
    writeFileSync(
      Buffer.from([...Buffer.from(`${upper}/`), 0xff, ...Buffer.from("/x")]) as unknown as string,
      "mine",
    );
    symlinkSync("/etc", path.join(upper, "\ufffd"));
    const out = path.join(tmp(), "out");
    const files = await collectChangedFiles(upper, { outDir: out });
    expect(files).toEqual([{ path: "\\xff", size: 0, copied: false, skipped: "unsafe_name" }]);
    expect(existsSync(out) ? readdirSync(out) : []).toEqual([]);
  });

  it("walks no deeper than MAX_DEPTH", async () => {
    const upper = tmp();
    mkdirSync(path.join(upper, ...Array.from({ length: 70 }, () => "d")), { recursive: true });
    writeFileSync(path.join(upper, "top.txt"), "t");
    const files = await collectChangedFiles(upper, {});
    expect(files.map((f) => f.skipped ?? f.path)).toEqual(["too_deep", "top.txt"]);
    expect(files[0]?.path).toBe(Array.from({ length: 65 }, () => "d").join("/"));
  });

  it("the total cap bounds what is copied, sparse files included", async () => {
    const upper = tmp();
    for (const n of ["a", "b", "c"]) execFileSync("truncate", ["-s", "40M", path.join(upper, n)]);
    const out = path.join(tmp(), "out");
    const files = await collectChangedFiles(upper, {
      outDir: out,
      totalCapBytes: 100 * 1024 * 1024,
    });
    expect(files.map((f) => [f.path, f.copied, f.skipped ?? null])).toEqual([
      ["a", true, null],
      ["b", true, null],
      ["c", false, "total_cap"],
    ]);
  });
});

describe("a byte order mark is part of a name", () => {
  it("is kept, so `\\ufeffsub` and `sub` stay two names", async () => {
    const { nameOf } = await import("../../src/sandbox/files-out.js");
    expect(nameOf(Buffer.from([0xef, 0xbb, 0xbf, 0x73]))).toBe("\ufeffs");
    const upper = tmp();
    mkdirSync(path.join(upper, "sub"));
    mkdirSync(path.join(upper, "\ufeffsub"));
    writeFileSync(path.join(upper, "sub/f"), "plain");
    writeFileSync(path.join(upper, "\ufeffsub/f"), "BOM-version");
    const out = path.join(tmp(), "out");
    const files = await collectChangedFiles(upper, { outDir: out });
    expect(files.map((f) => f.path).sort()).toEqual(["sub/f", "\ufeffsub/f"]);
    expect(readFileSync(path.join(out, "sub/f"), "utf8")).toBe("plain");
  });
});
