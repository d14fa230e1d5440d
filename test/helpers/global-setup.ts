/**
 * Runs once per test run: builds the default image into the machine's shared image cache
 * (instant when it is already there), gives the run a root directory for data
 * directories, and at the end asserts that nothing leaked.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync } from "node:fs";
import path from "node:path";
import type { TestProject } from "vitest/node";
import { findLeaks } from "./leaks.js";

const ROOT = path.resolve(import.meta.dirname, "../..");

export default function setup(project: TestProject) {
  const needsImage = !process.env.CORRAL_TEST_UNIT_ONLY;
  if (needsImage && process.getuid?.() === 0) {
    execFileSync(process.execPath, [path.join(ROOT, "bin/corral.js"), "image", "build"], {
      stdio: ["ignore", "inherit", "inherit"],
    });
  }
  mkdirSync("/var/tmp/corral-test", { recursive: true, mode: 0o711 });
  chmodSync("/var/tmp/corral-test", 0o711);
  const testRoot = mkdtempSync("/var/tmp/corral-test/run-");
  chmodSync(testRoot, 0o711);
  project.provide("testRoot", testRoot);

  return async () => {
    const leaks = await findLeaks(testRoot);
    if (leaks.length > 0) {
      throw new Error(`the test run leaked:\n  ${leaks.join("\n  ")}`);
    }
    execFileSync("rm", ["-rf", testRoot]);
  };
}

declare module "vitest" {
  export interface ProvidedContext {
    testRoot: string;
  }
}
