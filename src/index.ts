/**
 * Corral as a library: the entry points that the server, the SDK and the MCP server wrap.
 *
 *   const sbx = await createSandbox({ limits: { mem: "1g" }, idleTtl: 120_000 });
 *   const r = await sbx.runCode("x = 41\nx + 1");        // r.results[0].data["text/plain"] === "42"
 *   await sbx.runCode("cd /tmp; export A=1", { language: "shell" });
 *   await sbx.commands.run("ls -l");
 *   await sbx.destroy();
 */
import { type ConfigFlags, loadConfig } from "./core/config.js";
import { CorralError, checkKeys } from "./core/errors.js";
import { LIMIT_FLAG_KEYS, type LimitFlags, limitsFromFlags } from "./core/limits.js";
import type { ChangeWindow } from "./sandbox/file-changes.js";
import { collectGarbage } from "./sandbox/gc.js";
import { type Host, openHost } from "./sandbox/host.js";
import { loadImageRef } from "./sandbox/image-ref.js";
import { Session } from "./sandbox/session.js";
import { WarmPool } from "./sandbox/warm-pool.js";

export type { CommandHandle, CommandInfo } from "./sandbox/commands.js";
export type { ExecEvent, Execution, RichResult } from "./sandbox/context.js";
export type { ChangeWindow } from "./sandbox/file-changes.js";
export type {
  EntryInfo,
  FileType,
  SessionFiles,
  WriteData,
  WriteInfo,
  WriteOptions,
} from "./sandbox/files.js";
export type { FileChange } from "./sandbox/layer-walk.js";
export type {
  CommandOptions,
  CommandResult,
  RunCodeOptions,
  SessionEndReason,
} from "./sandbox/session.js";
export { Session } from "./sandbox/session.js";
export { CorralError };

export interface CreateSandboxOptions extends ConfigFlags {
  /** Image name, key or digest (default "default"). */
  image?: string;
  /** Limits as the CLI spells them ("512m", "1.5", "30s"); the rest are the defaults. */
  limits?: LimitFlags;
  envs?: Record<string, string>;
  metadata?: Record<string, string>;
  /** Hard deadline of the sandbox from now, in ms (E2B's timeoutMs); none by default. */
  timeoutMs?: number;
  /** Destroyed after this many ms without activity (default 300 000). */
  idleTtl?: number;
  /** Where code and commands run (default /work); it must exist. */
  workdir?: string;
  /** The file API's size cap per file (default 100 MiB). */
  maxFileBytes?: number;
  /** Called with each closed file-change window (created, modified, deleted paths). */
  onFileChanges?: (window: ChangeWindow) => void;
}

const CONFIG_KEYS = ["dataDir", "imageDir", "runtime", "layerPool"] as const;
const SANDBOX_KEYS = [
  ...CONFIG_KEYS,
  "image",
  "limits",
  "envs",
  "metadata",
  "timeoutMs",
  "idleTtl",
  "workdir",
  "maxFileBytes",
  "onFileChanges",
];

function checkLimitKeys(limits: LimitFlags | undefined): LimitFlags {
  const l = limits ?? {};
  checkKeys(l, LIMIT_FLAG_KEYS, "limits");
  for (const [k, v] of Object.entries(l)) {
    if (typeof v !== "string" && typeof v !== "number") {
      throw new CorralError(
        "invalid_argument",
        `limit ${k} must be a string such as "512m" or a number`,
      );
    }
  }
  return Object.fromEntries(Object.entries(l).map(([k, v]) => [k, String(v)])) as LimitFlags;
}

/**
 * What dead owners left in a data directory (a process that crashed with live sandboxes)
 * is removed once per process and data directory, as every `corral run` does.
 */
const collected = new Map<string, Promise<void>>();
function collectOnce(host: Host): Promise<void> {
  let p = collected.get(host.config.dataDir);
  if (!p) {
    p = collectGarbage(host, { dryRun: false }).then(
      () => undefined,
      () => undefined,
    );
    collected.set(host.config.dataDir, p);
  }
  return p;
}

/** Create a live sandbox with stateful code contexts; `destroy()` ends it. */
export async function createSandbox(options: CreateSandboxOptions = {}): Promise<Session> {
  checkKeys(options, SANDBOX_KEYS, "createSandbox options");
  const limits = limitsFromFlags(checkLimitKeys(options.limits));
  const config = loadConfig(options);
  const host = await openHost(config);
  try {
    await collectOnce(host);
    const image = await loadImageRef(config, options.image ?? "default");
    return await Session.create(host, {
      image,
      limits,
      ...(options.envs ? { envs: options.envs } : {}),
      ...(options.metadata ? { metadata: options.metadata } : {}),
      ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
      ...(options.idleTtl !== undefined ? { idleTtlMs: options.idleTtl } : {}),
      ...(options.workdir !== undefined ? { workdir: options.workdir } : {}),
      ...(options.maxFileBytes !== undefined ? { maxFileBytes: options.maxFileBytes } : {}),
      ...(options.onFileChanges ? { onFileChanges: options.onFileChanges } : {}),
      onEnd: () => host.close(),
    });
  } catch (err) {
    host.close();
    throw err;
  }
}

export { poolKey, WarmPool, type WarmPoolSpec, type WarmPoolState } from "./sandbox/warm-pool.js";

/**
 * A warm pool for sandboxes of one shape (image, limits): `size` wait ready with a
 * running Python kernel; `await pool.take()` hands one out at once. `await pool.close()`
 * destroys those still waiting; sessions already handed out live on until they end.
 */
export async function createWarmPool(
  options: ConfigFlags & { image?: string; limits?: LimitFlags; size: number },
): Promise<WarmPool> {
  checkKeys(options, [...CONFIG_KEYS, "image", "limits", "size"], "createWarmPool options");
  const limits = limitsFromFlags(checkLimitKeys(options.limits));
  const config = loadConfig(options);
  const host = await openHost(config);
  try {
    await collectOnce(host);
    const image = await loadImageRef(config, options.image ?? "default");
    // The host (its event log) stays open while the pool or any session it gave runs.
    return new WarmPool(host, { image, limits, size: options.size }, () => host.close());
  } catch (err) {
    host.close();
    throw err;
  }
}
