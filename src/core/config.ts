import { createHash } from "node:crypto";
import { realpathSync } from "node:fs";
import path from "node:path";
import { CorralError } from "./errors.js";
import { DEFAULT_LIMITS } from "./limits.js";
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
  /**
   * Pre-made loop-backed writable layers kept ready under `<dataDir>/pool`: how many of
   * each shape (0 disables the pool), and the shapes (size and inode count) pooled.
   */
  layerPool: { perShape: number; shapes: { diskBytes: number; inodes: number }[] };
}

/** Two of the default layer: enough for back-to-back creates, little disk (sparse files). */
export const DEFAULT_LAYER_POOL = 2;
const MAX_LAYER_POOL = 64;

export function parseLayerPool(text: string): number {
  if (!/^\s*\d+\s*$/.test(text) || Number(text) > MAX_LAYER_POOL) {
    throw new CorralError(
      "invalid_argument",
      `invalid layer pool size "${text}": expected a whole number from 0 (off) to ${MAX_LAYER_POOL}`,
    );
  }
  return Number(text);
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
  layerPool?: string;
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
    layerPool: {
      perShape: parseLayerPool(
        flags.layerPool ?? env.CORRAL_LAYER_POOL ?? String(DEFAULT_LAYER_POOL),
      ),
      shapes: [{ diskBytes: DEFAULT_LIMITS.diskBytes, inodes: DEFAULT_LIMITS.inodes }],
    },
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
