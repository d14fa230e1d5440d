import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  classifyCopyUps,
  diffSnapshots,
  type LayerEntry,
  type LayerSnapshot,
  layerName,
  lowerType,
  MAX_WALK_DEPTH,
  snapshotLayer,
} from "../../src/sandbox/layer-walk.js";

const f = (size: number, mtimeMs = 1, ino = 1): LayerEntry => ({
  type: "file",
  size,
  mtimeMs,
  ino,
});
const d: LayerEntry = { type: "dir", size: 0, mtimeMs: 1, ino: 9 };
const wh: LayerEntry = { type: "whiteout", size: 0, mtimeMs: 1, ino: 5 };
const snap = (o: Record<string, LayerEntry>): LayerSnapshot => new Map(Object.entries(o));

describe("diffSnapshots", () => {
  it("finds created, modified and deleted files, sorted", () => {
    const before = snap({ "/w": d, "/w/a": f(1), "/w/b": f(2), "/w/c": f(3) });
    const after = snap({ "/w": { ...d, mtimeMs: 2 }, "/w/a": f(1), "/w/b": f(5, 2), "/w/z": f(1) });
    expect(diffSnapshots(before, after)).toEqual([
      { path: "/w/b", change: "modified", type: "file", size: 5 },
      { path: "/w/c", change: "deleted", type: "file", size: 0 },
      { path: "/w/z", change: "created", type: "file", size: 1 },
    ]);
  });
  it("sees a same-size rewrite by its time or inode, and a type change", () => {
    expect(diffSnapshots(snap({ "/a": f(1, 1, 1) }), snap({ "/a": f(1, 1, 2) }))).toHaveLength(1);
    expect(diffSnapshots(snap({ "/a": f(1, 1) }), snap({ "/a": f(1, 3) }))).toHaveLength(1);
    expect(diffSnapshots(snap({ "/a": f(1) }), snap({ "/a": d }))[0]?.change).toBe("modified");
  });
  it("reads a whiteout as the deletion of an image file, once", () => {
    expect(diffSnapshots(snap({}), snap({ "/etc/x": wh }))).toEqual([
      { path: "/etc/x", change: "deleted", type: "file", size: 0 },
    ]);
    expect(diffSnapshots(snap({ "/etc/x": wh }), snap({ "/etc/x": wh }))).toEqual([]);
    expect(diffSnapshots(snap({ "/etc/x": wh }), snap({ "/etc/x": f(2) }))[0]?.change).toBe(
      "created",
    );
    expect(diffSnapshots(snap({ "/etc/x": wh }), snap({}))).toEqual([]);
  });
  it("nothing changed, nothing reported", () => {
    const s = snap({ "/a": f(1), "/b": d });
    expect(diffSnapshots(s, new Map(s))).toEqual([]);
  });
});

describe("walking and looking up without following links", () => {
  const dir = mkdtempSync(path.join(tmpdir(), "corral-walk-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const upper = path.join(dir, "upper");
  const lower = path.join(dir, "lower");
  mkdirSync(path.join(upper, "work/sub"), { recursive: true });
  writeFileSync(path.join(upper, "work/sub/f"), "abc");
  symlinkSync("/", path.join(upper, "work/root"));
  mkdirSync(path.join(lower, "etc"), { recursive: true });
  writeFileSync(path.join(lower, "etc/conf"), "x");
  symlinkSync("/etc", path.join(lower, "linked"));

  it("lists a symlink as a symlink and never descends into it", async () => {
    const { snapshot } = await snapshotLayer(upper);
    expect([...snapshot.keys()]).toEqual(["/work", "/work/root", "/work/sub", "/work/sub/f"]);
    expect(snapshot.get("/work/root")?.type).toBe("symlink");
    expect(snapshot.get("/work/sub/f")?.size).toBe(3);
  });
  it("an upper directory that is a symlink itself gives nothing", async () => {
    expect((await snapshotLayer(path.join(upper, "work/root"))).snapshot.size).toBe(0);
  });
  it("looks up image entries without following the image's links", async () => {
    expect(await lowerType(lower, "/etc/conf")).toBe("file");
    expect(await lowerType(lower, "/etc")).toBe("dir");
    expect(await lowerType(lower, "/linked")).toBe("symlink");
    // /linked -> /etc on the host: must not resolve to the host's /etc/passwd
    expect(await lowerType(lower, "/linked/passwd")).toBeNull();
    expect(await lowerType(lower, "/nope")).toBeNull();
  });
  it("a copy-up is a modification, a copied-up directory no change", async () => {
    expect(
      await classifyCopyUps(lower, [
        { path: "/etc", change: "created", type: "dir", size: 0 },
        { path: "/etc/conf", change: "created", type: "file", size: 2 },
        { path: "/etc/new", change: "created", type: "file", size: 2 },
      ]),
    ).toEqual([
      { path: "/etc/conf", change: "modified", type: "file", size: 2 },
      { path: "/etc/new", change: "created", type: "file", size: 2 },
    ]);
  });
});

describe("hostile layer shapes", () => {
  it("names that are not UTF-8 are kept apart, escaped; a backslash name cannot fake one", () => {
    expect(layerName(Buffer.from([0x61, 0xff]))).toBe("a\\xff");
    expect(layerName(Buffer.from("a\\xff"))).toBe("a\\x5cxff");
    expect(layerName(Buffer.from("ü.txt"))).toBe("ü.txt");
  });

  it("a deep tree is walked to MAX_WALK_DEPTH only, and marked truncated", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "corral-walk-deep-"));
    try {
      mkdirSync(path.join(dir, ...Array.from({ length: MAX_WALK_DEPTH + 10 }, () => "d")), {
        recursive: true,
      });
      const { snapshot, truncated } = await snapshotLayer(dir);
      expect(truncated).toBe(true);
      expect(snapshot.size).toBe(MAX_WALK_DEPTH + 1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a walk past its deadline stops, marked truncated", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "corral-walk-slow-"));
    try {
      for (let i = 0; i < 50; i++) mkdirSync(path.join(dir, `d${i}`));
      const { truncated } = await snapshotLayer(dir, { deadlineMs: -1 });
      expect(truncated).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
