import { createHash } from "node:crypto";
import { realpathSync } from "node:fs";
import path from "node:path";
import type { IdRange } from "./sandbox.js";

/**
 * The one typed configuration of Corral, from (in increasing precedence) defaults, the
 * environment and command-line flags. `corral config` prints it.
 */
export interface CorralConfig {
  /** All state of this instance lives here: sandboxes, runc's root, the event store. */
  dataDir: string;
  /** The image cache, shared by every data directory on the machine. */
  imageDir: string;
  /** The OCI runtime binary. Only runc is supported on these hosts. */
  runtime: string;
  /** Host uid/gid range that sandbox ids map to; images are shifted to it once. */
  ids: IdRange;
  /** Who acts: `local:<uid>` for the CLI. */
  principal: string;
}

export const DEFAULT_DATA_DIR = "/var/lib/corral";
export const DEFAULT_IMAGE_DIR = "/var/lib/corral/images";
/** A high range, far from the 100000+ subordinate ranges that useradd hands out. */
export const DEFAULT_UID_BASE = 100_000_000;
export const ID_RANGE_SIZE = 65_536;

export interface ConfigFlags {
  dataDir?: string;
  imageDir?: string;
  runtime?: string;
}

export function loadConfig(
  flags: ConfigFlags = {},
  env: NodeJS.ProcessEnv = process.env,
): CorralConfig {
  const base = env.CORRAL_UID_BASE ? Number(env.CORRAL_UID_BASE) : DEFAULT_UID_BASE;
  return {
    dataDir: path.resolve(flags.dataDir ?? env.CORRAL_DATA_DIR ?? DEFAULT_DATA_DIR),
    imageDir: path.resolve(flags.imageDir ?? env.CORRAL_IMAGE_DIR ?? DEFAULT_IMAGE_DIR),
    runtime: flags.runtime ?? env.CORRAL_RUNTIME ?? "runc",
    ids: { base, size: ID_RANGE_SIZE },
    principal: `local:${process.getuid?.() ?? 0}`,
  };
}

/**
 * A short tag naming this data directory in host-global namespaces (cgroup names, lock
 * names), so that `gc` of one instance never touches another's.
 */
export function dataTag(dataDir: string): string {
  let real = dataDir;
  try {
    real = realpathSync(dataDir);
  } catch {
    // not created yet: the resolved path is what it will be
  }
  return createHash("sha256").update(real).digest("hex").slice(0, 10);
}
