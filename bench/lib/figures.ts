/**
 * Benchmark figures and how they are printed: a readable table, and one line per figure
 * in a stable format that scripts can grep (`bench <name> ...`). Pure.
 */

/** A timing figure: every sample in ms, and the figure it is compared with, if any. */
export interface TimingFigure {
  kind: "timing";
  name: string;
  samples: number[];
  /** The name of the timing figure of the same run this one is a ratio against. */
  baseline: string | null;
}

/** Any other figure: one value with its unit, and which direction is better. */
export interface ValueFigure {
  kind: "value";
  name: string;
  n: number;
  value: number;
  unit: string;
  baseline: string | null;
  baselineValue: number | null;
  better: "higher" | "lower";
}

export type Figure = TimingFigure | ValueFigure;

/** The p-th percentile (0..100) by nearest rank; NaN for no samples. */
export function percentile(samples: readonly number[], p: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/** Numbers as printed: at most 2 decimals, no exponent, "none" when absent. */
export function num(x: number | null | undefined): string {
  if (x === null || x === undefined || Number.isNaN(x)) return "none";
  return String(Math.round(x * 100) / 100);
}

function ratio(value: number, base: number | null | undefined): string {
  return base === null || base === undefined || base === 0 || Number.isNaN(base)
    ? "none"
    : num(value / base);
}

function timingOf(figures: readonly Figure[], name: string | null): TimingFigure | undefined {
  return figures.find((f): f is TimingFigure => f.kind === "timing" && f.name === name);
}

/** `bench <name> n=<n> p50_ms=<x> p95_ms=<x> baseline=<name> baseline_p50_ms=<x> ratio=<x>` */
export function timingLine(fig: TimingFigure, all: readonly Figure[]): string {
  const p50 = percentile(fig.samples, 50);
  const base = timingOf(all, fig.baseline);
  const baseP50 = base ? percentile(base.samples, 50) : null;
  return `bench ${fig.name} n=${fig.samples.length} p50_ms=${num(p50)} p95_ms=${num(percentile(fig.samples, 95))} baseline=${fig.baseline ?? "none"} baseline_p50_ms=${num(baseP50)} ratio=${ratio(p50, baseP50)}`;
}

/** `bench <name> n=<n> value=<x> unit=<u> baseline=<name|none> baseline_value=<x> ratio=<x> better=<higher|lower>` */
export function valueLine(fig: ValueFigure): string {
  return `bench ${fig.name} n=${fig.n} value=${num(fig.value)} unit=${fig.unit} baseline=${fig.baseline ?? "none"} baseline_value=${num(fig.baselineValue)} ratio=${ratio(fig.value, fig.baselineValue)} better=${fig.better}`;
}

export function figureLine(fig: Figure, all: readonly Figure[]): string {
  return fig.kind === "timing" ? timingLine(fig, all) : valueLine(fig);
}

/** A readable table of every figure, aligned in columns. */
export function formatTable(figures: readonly Figure[]): string {
  const rows: string[][] = [["figure", "n", "p50 / value", "p95", "baseline", "ratio"]];
  for (const f of figures) {
    if (f.kind === "timing") {
      const base = timingOf(figures, f.baseline);
      const p50 = percentile(f.samples, 50);
      const baseP50 = base ? percentile(base.samples, 50) : null;
      rows.push([
        f.name,
        String(f.samples.length),
        `${num(p50)} ms`,
        `${num(percentile(f.samples, 95))} ms`,
        f.baseline ? `${f.baseline} (${num(baseP50)} ms)` : "-",
        f.baseline ? `${ratio(p50, baseP50)}x` : "-",
      ]);
    } else {
      rows.push([
        f.name,
        String(f.n),
        `${num(f.value)} ${f.unit}`,
        "-",
        f.baseline ? `${f.baseline} (${num(f.baselineValue)} ${f.unit})` : "-",
        f.baseline ? `${ratio(f.value, f.baselineValue)}x` : "-",
      ]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}
