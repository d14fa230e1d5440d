/** `corral demo` as a user runs it: four real-data analyses, checked against R's numbers. */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { expect, it } from "vitest";
import { CLI, testDataDir } from "../helpers/sandbox.js";

it("the demo runs all four examples and every number matches the reference", async () => {
  const dataDir = testDataDir("demo");
  const out = path.join(dataDir, "demo-out");
  const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
    execFile(
      process.execPath,
      [CLI, "--data-dir", dataDir, "demo", "--out", out],
      { timeout: 120_000 },
      (err, stdout, stderr) =>
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    ),
  );
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  expect(r.stdout.match(/\[ok\]/g)).toHaveLength(4);
  expect(r.stdout).not.toMatch(/MISMATCH|!!/);
  expect(r.stdout).toMatch(/coef\.intercept -64\.3421/);
  expect(r.stdout).toMatch(/r_squared 0\.6059/);
  expect(r.stdout).toMatch(/All four results match the reference values/);
  const png = readFileSync(path.join(out, "ozone_by_month.png"));
  expect(png.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  expect(png.length).toBeGreaterThan(10_000);
});
