/** The static test program of test/fixtures/tinybox.c, built once per directory. */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { ROOT } from "./sandbox.js";

export function buildTinybox(dir: string): string {
  const out = path.join(dir, "tinybox");
  if (!existsSync(out)) {
    execFileSync("gcc", [
      "-static",
      "-O2",
      "-Wall",
      "-o",
      out,
      path.join(ROOT, "test/fixtures/tinybox.c"),
    ]);
  }
  return out;
}
