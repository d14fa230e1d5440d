import { describe, expect, it } from "vitest";
import { type Figure, figureLine, formatTable, num, percentile } from "../../bench/lib/figures.js";
import { type Bench, interleave, selectBenches } from "../../bench/lib/registry.js";

describe("bench figures", () => {
  it("takes percentiles by nearest rank", () => {
    const s = [5, 1, 4, 2, 3, 10, 9, 8, 7, 6];
    expect(percentile(s, 50)).toBe(5);
    expect(percentile(s, 95)).toBe(10);
    expect(percentile([42], 95)).toBe(42);
    expect(percentile([], 50)).toBeNaN();
  });

  it("prints numbers with at most two decimals, none when absent", () => {
    expect(num(47.126)).toBe("47.13");
    expect(num(3)).toBe("3");
    expect(num(null)).toBe("none");
    expect(num(Number.NaN)).toBe("none");
  });

  const figures: Figure[] = [
    { kind: "timing", name: "runc_run_true", samples: [40, 50, 60], baseline: null },
    {
      kind: "timing",
      name: "create_run_destroy",
      samples: [70, 75, 80],
      baseline: "runc_run_true",
    },
    { kind: "timing", name: "cli_end_to_end", samples: [300], baseline: null },
    {
      kind: "value",
      name: "create_run_destroy_pool_hits",
      n: 30,
      value: 1,
      unit: "fraction",
      baseline: null,
      baselineValue: null,
      better: "higher",
    },
    {
      kind: "value",
      name: "proxy_throughput",
      n: 5,
      value: 0.4,
      unit: "GB/s",
      baseline: "bare_relay",
      baselineValue: 0.8,
      better: "higher",
    },
  ];

  it("prints each figure as one line in the stable formats", () => {
    expect(figures.map((f) => figureLine(f, figures))).toEqual([
      "bench runc_run_true n=3 p50_ms=50 p95_ms=60 baseline=none baseline_p50_ms=none ratio=none",
      "bench create_run_destroy n=3 p50_ms=75 p95_ms=80 baseline=runc_run_true baseline_p50_ms=50 ratio=1.5",
      "bench cli_end_to_end n=1 p50_ms=300 p95_ms=300 baseline=none baseline_p50_ms=none ratio=none",
      "bench create_run_destroy_pool_hits n=30 value=1 unit=fraction baseline=none baseline_value=none ratio=none better=higher",
      "bench proxy_throughput n=5 value=0.4 unit=GB/s baseline=bare_relay baseline_value=0.8 ratio=0.5 better=higher",
    ]);
  });

  it("every line matches the documented grammar", () => {
    const timing =
      /^bench [a-z0-9_.]+ n=\d+ p50_ms=[\d.]+ p95_ms=[\d.]+ baseline=[a-z0-9_.]+ baseline_p50_ms=([\d.]+|none) ratio=([\d.]+|none)$/;
    const value =
      /^bench [a-z0-9_.]+ n=\d+ value=[\d.]+ unit=\S+ baseline=[a-z0-9_.]+ baseline_value=([\d.]+|none) ratio=([\d.]+|none) better=(higher|lower)$/;
    for (const f of figures) {
      expect(figureLine(f, figures)).toMatch(f.kind === "timing" ? timing : value);
    }
  });

  it("has a readable table with a header and one row per figure", () => {
    const table = formatTable(figures).split("\n");
    expect(table).toHaveLength(figures.length + 1);
    expect(table[0]).toMatch(/^figure\s+n\s+p50 \/ value\s+p95\s+baseline\s+ratio$/);
    expect(table[2]).toMatch(
      /^create_run_destroy\s+3\s+75 ms\s+80 ms\s+runc_run_true \(50 ms\)\s+1\.5x$/,
    );
  });
});

describe("bench registry", () => {
  const bench = (name: string, figures: string[]): Bench => ({
    name,
    summary: "",
    figures,
    defaultN: 1,
    run: async () => [],
  });
  const all = [
    bench("startup", ["runc_run_true", "create_run_destroy"]),
    bench("cli", ["cli_end_to_end"]),
  ];

  it("--only selects by bench name or by figure name; none selects all", () => {
    expect(selectBenches(all, []).map((b) => b.name)).toEqual(["startup", "cli"]);
    expect(selectBenches(all, ["cli"]).map((b) => b.name)).toEqual(["cli"]);
    expect(selectBenches(all, ["create_run_destroy"]).map((b) => b.name)).toEqual(["startup"]);
    expect(selectBenches(all, ["nope"])).toEqual([]);
  });

  it("interleaves cases A, B, A, B and drops the warm-up rounds", async () => {
    const order: string[] = [];
    const samples = await interleave(3, 2, [
      { name: "a", once: async (i) => void order.push(`a${i}`) },
      { name: "b", once: async (i) => void order.push(`b${i}`) },
    ]);
    expect(order).toEqual(["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4"]);
    expect(samples.get("a")).toHaveLength(3);
    expect(samples.get("b")).toHaveLength(3);
  });
});
