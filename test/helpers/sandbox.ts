/**
 * Helpers for integration tests: real hosts (one data directory per test file, under the
 * run's test root), the real default image, real sandboxes.
 */
import { mkdirSync } from "node:fs";
import path from "node:path";
import { inject } from "vitest";
import { type CorralConfig, loadConfig } from "../../src/core/config.js";
import { DEFAULT_LIMITS, type Limits } from "../../src/core/limits.js";
import type { ImageRef, Language } from "../../src/core/sandbox.js";
import { type Host, openHost } from "../../src/sandbox/host.js";
import { loadImageRef } from "../../src/sandbox/image-ref.js";
import { type RunOptions, type RunResult, runCode } from "../../src/sandbox/run-code.js";

export const ROOT = path.resolve(import.meta.dirname, "../..");
export const CLI = path.join(ROOT, "bin/corral.js");

/** A fresh data directory under this run's test root. */
export function testDataDir(name: string): string {
  const dir = path.join(
    inject("testRoot"),
    `${name}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`,
  );
  mkdirSync(dir, { recursive: true, mode: 0o711 });
  return dir;
}

export interface TestEnv {
  config: CorralConfig;
  host: Host;
  image: ImageRef;
  run(
    language: Language,
    code: string,
    limits?: Partial<Limits>,
    extra?: Partial<RunOptions>,
  ): Promise<RunResult>;
  close(): void;
}

export async function testEnv(name: string): Promise<TestEnv> {
  const config = loadConfig({ dataDir: testDataDir(name) });
  const host = await openHost(config);
  const image = await loadImageRef(config, "default");
  return {
    config,
    host,
    image,
    run: (language, code, limits = {}, extra = {}) =>
      runCode(host, { language, code, image, limits: { ...DEFAULT_LIMITS, ...limits }, ...extra }),
    close: () => host.close(),
  };
}
