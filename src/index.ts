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
import { type LimitFlags, limitsFromFlags } from "./core/limits.js";
import { openHost } from "./sandbox/host.js";
import { loadImageRef } from "./sandbox/image-ref.js";
import { Session } from "./sandbox/session.js";

export { CorralError } from "./core/errors.js";
export type { ExecEvent, Execution, RichResult } from "./sandbox/context.js";
export type {
  EntryInfo,
  FileType,
  SessionFiles,
  WriteData,
  WriteInfo,
  WriteOptions,
} from "./sandbox/files.js";
export type {
  CommandOptions,
  CommandResult,
  RunCodeOptions,
  SessionEndReason,
} from "./sandbox/session.js";
export { Session } from "./sandbox/session.js";

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
}

/** Create a live sandbox with stateful code contexts; `destroy()` ends it. */
export async function createSandbox(options: CreateSandboxOptions = {}): Promise<Session> {
  const limits = limitsFromFlags(options.limits ?? {});
  const config = loadConfig(options);
  const host = await openHost(config);
  try {
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
 * running Python kernel; `take()` hands one out at once. Close it to destroy the rest.
 */
export async function createWarmPool(
  options: ConfigFlags & { image?: string; limits?: LimitFlags; size: number },
): Promise<{ pool: import("./sandbox/warm-pool.js").WarmPool; close(): Promise<void> }> {
  const { WarmPool } = await import("./sandbox/warm-pool.js");
  const limits = limitsFromFlags(options.limits ?? {});
  const config = loadConfig(options);
  const host = await openHost(config);
  try {
    const image = await loadImageRef(config, options.image ?? "default");
    const pool = new WarmPool(host, { image, limits, size: options.size });
    return {
      pool,
      close: async () => {
        await pool.close();
        host.close();
      },
    };
  } catch (err) {
    host.close();
    throw err;
  }
}
