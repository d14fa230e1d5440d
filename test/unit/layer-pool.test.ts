import { describe, expect, it } from "vitest";
import { DEFAULT_LAYER_POOL, loadConfig, parseLayerPool } from "../../src/core/config.js";
import { GiB } from "../../src/core/limits.js";
import {
  classifyPoolFile,
  type PoolFile,
  planPoolFill,
  poolEntryName,
  pooledShapeFor,
} from "../../src/sandbox/runtime/layer-pool.js";

const small = { diskBytes: GiB, inodes: 100_000 };
const big = { diskBytes: 4 * GiB, inodes: 400_000 };
const shapes = [small, big];
const ready = (shape: typeof small, token = "0123456789ab"): PoolFile => ({
  kind: "ready",
  name: poolEntryName(shape, token),
  shape,
});

describe("classifyPoolFile", () => {
  it("names an entry by format, shape and a random token", () => {
    expect(poolEntryName(small, "0123456789ab")).toBe("v1-1073741824-100000-0123456789ab.img");
  });

  it.each<[string, PoolFile["kind"]]>([
    ["v1-1073741824-100000-0123456789ab.img", "ready"],
    ["v1-4294967296-400000-ffffffffffff.img", "ready"],
    [".making-v1-1073741824-100000-0123456789ab.img", "making"],
    ["v0-1073741824-100000-0123456789ab.img", "stale"], // an older format
    ["v2-1073741824-100000-0123456789ab.img", "stale"], // a newer one: not ours to use
    ["v1-2147483648-100000-0123456789ab.img", "stale"], // a shape no longer pooled
    ["v1-1073741824-100000-0123456789ab.img.tmp", "foreign"],
    ["v1-1073741824-100000-XYZ.img", "foreign"],
    ["notes.txt", "foreign"],
    [".making-junk", "foreign"],
  ])("%s is %s", (name, kind) => {
    expect(classifyPoolFile(name, shapes).kind).toBe(kind);
  });

  it("reads the shape of a ready entry", () => {
    expect(classifyPoolFile("v1-4294967296-400000-ffffffffffff.img", shapes)).toEqual({
      kind: "ready",
      name: "v1-4294967296-400000-ffffffffffff.img",
      shape: big,
    });
  });

  it("treats every entry as stale when nothing is pooled (the pool turned off)", () => {
    expect(classifyPoolFile(poolEntryName(small, "0123456789ab"), []).kind).toBe("stale");
  });
});

describe("planPoolFill", () => {
  it("fills an empty pool one of each shape first", () => {
    expect(planPoolFill([], shapes, 2)).toEqual([small, big, small, big]);
  });

  it("makes only what each shape lacks; partial and stale files do not count", () => {
    const files: PoolFile[] = [
      ready(small, "000000000001"),
      ready(small, "000000000002"),
      ready(big, "000000000003"),
      { kind: "making", name: ".making-x" },
      { kind: "stale", name: "v0-x", why: "format v0" },
    ];
    expect(planPoolFill(files, shapes, 2)).toEqual([big]);
    expect(planPoolFill(files, shapes, 1)).toEqual([]);
  });

  it("makes nothing when the pool is off", () => {
    expect(planPoolFill([], shapes, 0)).toEqual([]);
    expect(planPoolFill([], [], 2)).toEqual([]);
  });
});

describe("pooledShapeFor", () => {
  it("serves only exact shapes (a pooled layer is never resized)", () => {
    expect(pooledShapeFor({ diskBytes: GiB, inodes: 100_000 }, shapes)).toEqual(small);
    expect(pooledShapeFor({ diskBytes: GiB, inodes: 100_001 }, shapes)).toBeNull();
    expect(pooledShapeFor({ diskBytes: 2 * GiB, inodes: 100_000 }, shapes)).toBeNull();
  });
});

describe("layer pool configuration", () => {
  it("defaults to two of the default layer", () => {
    const c = loadConfig({ dataDir: "/d" }, {});
    expect(c.layerPool).toEqual({ perShape: DEFAULT_LAYER_POOL, shapes: [small] });
    expect(DEFAULT_LAYER_POOL).toBe(2);
  });

  it("takes the flag over the environment; 0 turns it off", () => {
    expect(loadConfig({ dataDir: "/d" }, { CORRAL_LAYER_POOL: "5" }).layerPool.perShape).toBe(5);
    expect(
      loadConfig({ dataDir: "/d", layerPool: "0" }, { CORRAL_LAYER_POOL: "5" }).layerPool.perShape,
    ).toBe(0);
  });

  it.each(["-1", "two", "1.5", "65"])("refuses %j in one line", (text) => {
    expect(() => parseLayerPool(text)).toThrow(
      `invalid layer pool size "${text}": expected a whole number from 0 (off) to 64`,
    );
  });
});
