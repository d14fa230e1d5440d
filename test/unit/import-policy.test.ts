import { describe, expect, it } from "vitest";
import {
  decideTarEntry,
  type EntryDecision,
  normaliseArchivePath,
  parentsOf,
} from "../../src/images/import-policy.js";
import type { TarHeader } from "../../src/images/tar.js";

function entry(name: string, over: Partial<TarHeader> = {}): TarHeader {
  return {
    name,
    type: "file",
    typeflag: "0",
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: 3,
    mtime: 1_700_000_000,
    linkname: "",
    devmajor: 0,
    devminor: 0,
    pax: {},
    ...over,
  };
}

const owned = { uid: 0, gid: 0, mtime: 1_700_000_000 };

describe("normaliseArchivePath", () => {
  it.each([
    ["etc/passwd", "etc/passwd"],
    ["./etc/passwd", "etc/passwd"],
    ["etc//passwd", "etc/passwd"],
    ["etc/./passwd", "etc/passwd"],
    ["etc/", "etc"],
    ["./", ""],
    [".", ""],
    ["a/...", "a/..."],
    ["a/..b", "a/..b"],
    ["ü/日本", "ü/日本"],
  ])("%j is %j", (name, path) => {
    expect(normaliseArchivePath(name)).toEqual({ ok: true, path });
  });

  it.each([
    ["/etc/passwd", "is an absolute path"],
    ["//x", "is an absolute path"],
    ["..", 'contains ".."'],
    ["../x", 'contains ".."'],
    ["a/../../x", 'contains ".."'],
    ["a/b/..", 'contains ".."'],
    ["./../x", 'contains ".."'],
    ["a\0b", "contains a NUL byte"],
  ])("%j is refused: %s", (name, reason) => {
    expect(normaliseArchivePath(name)).toEqual({ ok: false, reason });
  });
});

describe("decideTarEntry", () => {
  const cases: [string, TarHeader, EntryDecision][] = [
    [
      "a regular file",
      entry("./usr/bin/x", { mode: 0o755, uid: 1000, gid: 50, size: 10 }),
      {
        kind: "file",
        path: "usr/bin/x",
        mode: 0o755,
        size: 10,
        strippedBits: false,
        uid: 1000,
        gid: 50,
        mtime: 1_700_000_000,
      },
    ],
    [
      "setuid root: the bit is stripped",
      entry("usr/bin/su", { mode: 0o4755 }),
      { kind: "file", path: "usr/bin/su", mode: 0o755, size: 3, strippedBits: true, ...owned },
    ],
    [
      "setgid: stripped",
      entry("usr/bin/wall", { mode: 0o2755, gid: 5 }),
      {
        kind: "file",
        path: "usr/bin/wall",
        mode: 0o755,
        size: 3,
        strippedBits: true,
        uid: 0,
        gid: 5,
        mtime: 1_700_000_000,
      },
    ],
    [
      "a setgid directory: stripped",
      entry("var/mail/", { type: "dir", typeflag: "5", mode: 0o2775 }),
      { kind: "dir", path: "var/mail", mode: 0o775, strippedBits: true, ...owned },
    ],
    [
      "the sticky bit stays",
      entry("tmp/", { type: "dir", typeflag: "5", mode: 0o1777 }),
      { kind: "dir", path: "tmp", mode: 0o1777, strippedBits: false, ...owned },
    ],
    [
      "an absolute symlink target is kept verbatim",
      entry("etc/mtab", { type: "symlink", typeflag: "2", linkname: "/proc/self/mounts" }),
      { kind: "symlink", path: "etc/mtab", target: "/proc/self/mounts", ...owned },
    ],
    [
      "a symlink target with .. is kept verbatim too",
      entry("lib", { type: "symlink", typeflag: "2", linkname: "../../../../etc" }),
      { kind: "symlink", path: "lib", target: "../../../../etc", ...owned },
    ],
    [
      "a hard link inside the tree",
      entry("usr/bin/b", { type: "hardlink", typeflag: "1", linkname: "./usr/bin/a" }),
      { kind: "hardlink", path: "usr/bin/b", target: "usr/bin/a" },
    ],
    ["the root entry", entry("./", { type: "dir", typeflag: "5" }), { kind: "root" }],
    [
      "the root entry as GNU tar -C DIR . writes it",
      entry(".", { type: "dir", typeflag: "5" }),
      { kind: "root" },
    ],
    [
      "a FIFO",
      entry("run/initctl", { type: "fifo", typeflag: "6" }),
      { kind: "skip", what: "fifo", reason: "FIFOs are not imported" },
    ],
    ["a whiteout", entry("etc/.wh.motd"), { kind: "whiteout", path: "etc/motd" }],
    ["a whiteout at the root", entry(".wh.opt"), { kind: "whiteout", path: "opt" }],
    [
      "a whiteout of a dotfile",
      entry("root/.wh..bashrc"),
      { kind: "whiteout", path: "root/.bashrc" },
    ],
    ["an opaque directory", entry("var/cache/.wh..wh..opq"), { kind: "opaque", dir: "var/cache" }],
    ["an opaque root", entry("./.wh..wh..opq"), { kind: "opaque", dir: "" }],
    [
      "aufs metadata",
      entry(".wh..wh.plnk/1.2"),
      { kind: "skip", what: "aufs", reason: "aufs metadata" },
    ],
    [
      "aufs metadata file",
      entry(".wh..wh.aufs"),
      { kind: "skip", what: "aufs", reason: "aufs metadata" },
    ],
    [
      "an absolute path",
      entry("/etc/passwd"),
      { kind: "refuse", reason: "its path is an absolute path" },
    ],
    [
      "a .. path",
      entry("a/../../etc/passwd"),
      { kind: "refuse", reason: 'its path contains ".."' },
    ],
    [
      "a .. directory",
      entry("../", { type: "dir", typeflag: "5" }),
      { kind: "refuse", reason: 'its path contains ".."' },
    ],
    [
      "a .. symlink name",
      entry("../x", { type: "symlink", typeflag: "2", linkname: "y" }),
      { kind: "refuse", reason: 'its path contains ".."' },
    ],
    ["a .. whiteout", entry("../.wh.x"), { kind: "refuse", reason: 'its path contains ".."' }],
    [
      "a whiteout of '.'",
      entry("etc/.wh.."),
      { kind: "refuse", reason: "it is a whiteout of no valid name" },
    ],
    [
      "a whiteout of '..'",
      entry("etc/.wh..."),
      { kind: "refuse", reason: "it is a whiteout of no valid name" },
    ],
    [
      "a whiteout of nothing",
      entry("etc/.wh."),
      { kind: "refuse", reason: "it is a whiteout of no valid name" },
    ],
    [
      "a hard link to an absolute path",
      entry("x", { type: "hardlink", typeflag: "1", linkname: "/etc/shadow" }),
      { kind: "refuse", reason: "its hard link target is an absolute path" },
    ],
    [
      "a hard link out through ..",
      entry("x", { type: "hardlink", typeflag: "1", linkname: "a/../../etc/shadow" }),
      { kind: "refuse", reason: 'its hard link target contains ".."' },
    ],
    [
      "a hard link to the root",
      entry("x", { type: "hardlink", typeflag: "1", linkname: "./" }),
      { kind: "refuse", reason: "it is a hard link to the root" },
    ],
    [
      "a hard link to itself",
      entry("./x", { type: "hardlink", typeflag: "1", linkname: "x" }),
      { kind: "refuse", reason: "it is a hard link to itself" },
    ],
    [
      "a character device",
      entry("dev/null", { type: "char", typeflag: "3", devmajor: 1, devminor: 3 }),
      {
        kind: "refuse",
        reason: "it is a character device (1,3); images may not hold device nodes",
      },
    ],
    [
      "a block device",
      entry("dev/sda", { type: "block", typeflag: "4", devmajor: 8, devminor: 0 }),
      { kind: "refuse", reason: "it is a block device (8,0); images may not hold device nodes" },
    ],
    [
      "a device node named as a whiteout is still a device",
      entry(".wh.x", { type: "char", typeflag: "3", devmajor: 0, devminor: 0 }),
      {
        kind: "refuse",
        reason: "it is a character device (0,0); images may not hold device nodes",
      },
    ],
    [
      "a GNU sparse file",
      entry("big", { type: "sparse", typeflag: "S" }),
      { kind: "refuse", reason: "GNU sparse files are not supported" },
    ],
    [
      "a pax sparse file",
      entry("big", { pax: { "GNU.sparse.major": "1" } }),
      { kind: "refuse", reason: "GNU sparse files are not supported" },
    ],
    [
      "an unknown entry type",
      entry("x", { type: "other", typeflag: "V" }),
      { kind: "refuse", reason: 'its entry type "V" is not supported' },
    ],
    [
      "a uid outside the sandbox's range",
      entry("x", { uid: 65536 }),
      { kind: "refuse", reason: "it is owned by uid 65536, outside the sandbox's ids 0..65535" },
    ],
    [
      "a gid outside the sandbox's range",
      entry("x", { type: "dir", typeflag: "5", gid: 100_000_000 }),
      {
        kind: "refuse",
        reason: "it is owned by gid 100000000, outside the sandbox's ids 0..65535",
      },
    ],
    [
      "a symlink owned outside the range",
      entry("x", { type: "symlink", typeflag: "2", linkname: "y", uid: 70000 }),
      { kind: "refuse", reason: "it is owned by uid 70000, outside the sandbox's ids 0..65535" },
    ],
    [
      "nobody is inside the range",
      entry("x", { uid: 65534, gid: 65534, size: 0 }),
      {
        kind: "file",
        path: "x",
        mode: 0o644,
        size: 0,
        strippedBits: false,
        uid: 65534,
        gid: 65534,
        mtime: 1_700_000_000,
      },
    ],
    [
      "a symlink with no target",
      entry("x", { type: "symlink", typeflag: "2", linkname: "" }),
      { kind: "refuse", reason: "it is a symlink with no target" },
    ],
    [
      "a symlink target over 4095 bytes",
      entry("x", { type: "symlink", typeflag: "2", linkname: "a".repeat(4096) }),
      { kind: "refuse", reason: "its symlink target is too long" },
    ],
    [
      "a file named as the root",
      entry("./"),
      { kind: "refuse", reason: "it names the root but is not a directory" },
    ],
  ];

  it.each(cases)("%s", (_what, header, decision) => {
    expect(decideTarEntry(header)).toEqual(decision);
  });
});

describe("parentsOf", () => {
  it.each([
    ["a", []],
    ["a/b", ["a"]],
    ["a/b/c", ["a", "a/b"]],
  ])("%j", (p, parents) => {
    expect(parentsOf(p)).toEqual(parents);
  });
});
