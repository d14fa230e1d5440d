/**
 * The warm pool: sandboxes created, self-checked and given a running Python kernel ahead
 * of demand, so that a caller gets one at once. Pools are keyed by everything that shapes
 * a sandbox at creation (image digest, limits, workdir; host mounts and the network
 * policy join the key when they exist); what a caller brings at hand-out (environment,
 * labels, deadline, idle TTL) is applied then. A pooled sandbox serves one session and is
 * destroyed with it: it is never returned to the pool. Each hand-out is replaced in the
 * background, one creation at a time, so that refilling never starves live sessions.
 */
import { createHash } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { CorralError, checkKeys } from "../core/errors.js";
import type { Limits } from "../core/limits.js";
import type { ImageRef } from "../core/sandbox.js";
import type { ContextLanguage } from "../kernels/kernels.js";
import type { Host } from "./host.js";
import { type AdoptOptions, Session } from "./session.js";

/**
 * What a caller brings to `take`: the same names as createSandbox's (`idleTtl` in ms;
 * `idleTtlMs` is its older name, still taken).
 */
export type TakeOptions = AdoptOptions & { idleTtl?: number };

const TAKE_KEYS = [
  "envs",
  "metadata",
  "timeoutMs",
  "idleTtl",
  "idleTtlMs",
  "onEnd",
  "onFileChanges",
] as const;

export interface WarmPoolSpec {
  image: ImageRef;
  limits: Limits;
  workdir?: string;
  /** How many sandboxes wait ready (0 disables the pool). */
  size: number;
  /** Kernels started ahead (default: python). */
  prestart?: ContextLanguage[];
}

export interface WarmPoolState {
  key: string;
  image: string;
  size: number;
  ready: number;
  creating: number;
  handedOut: number;
  misses: number;
  failures: number;
  lastError: string | null;
  pid: number;
  updatedAt: string;
}

/** The pool key: a digest of what a sandbox is made with. Pure. */
export function poolKey(spec: Pick<WarmPoolSpec, "image" | "limits" | "workdir">): string {
  const limits = Object.fromEntries(
    Object.entries(spec.limits).sort(([a], [b]) => (a < b ? -1 : 1)),
  );
  const canonical = JSON.stringify({
    image: spec.image.digest,
    limits,
    workdir: spec.workdir ?? "/work",
  });
  return createHash("sha256").update(canonical).digest("hex").slice(0, 16);
}

export const MAX_POOL_SIZE = 256;

export class WarmPool {
  readonly key: string;
  private readonly ready: Session[] = [];
  private creating = 0;
  private handedOut = 0;
  private misses = 0;
  private failures = 0;
  private lastError: string | null = null;
  private closed = false;
  /** close() has finished: no refill runs and no sandbox waits. */
  private drained = false;
  /** take() calls under way (each may be creating a sandbox on the host). */
  private taking = 0;
  private filling: Promise<void> | null = null;
  /** Three creations in a row failed: wait for the next hand-out to try again. */
  private gaveUp = false;
  private readonly stateFile: string;

  /** Sessions handed out and not yet ended (the host stays open for them). */
  private readonly live = new Set<Session>();
  private releaseHost: (() => void) | null = null;

  constructor(
    private readonly host: Host,
    readonly spec: WarmPoolSpec,
    /** Called once the pool is closed and every session it handed out has ended. */
    onReleased?: () => void,
  ) {
    this.releaseHost = onReleased ?? null;
    if (!Number.isInteger(spec.size) || spec.size < 0 || spec.size > MAX_POOL_SIZE) {
      throw new Error(`pool size must be a whole number in [0, ${MAX_POOL_SIZE}]`);
    }
    this.key = poolKey(spec);
    this.stateFile = path.join(host.config.dataDir, "warm-pool", `${this.key}-${process.pid}.json`);
    this.fill();
  }

  /** Wait until the pool is full (or failing); for tests and benchmarks. */
  async whenFull(): Promise<void> {
    while (!this.closed && this.ready.length < this.spec.size && this.failures < 3) {
      await (this.filling ?? new Promise((r) => setTimeout(r, 20)));
    }
  }

  private async createOne(): Promise<Session> {
    const session = await Session.create(this.host, {
      image: this.spec.image,
      limits: this.spec.limits,
      ...(this.spec.workdir ? { workdir: this.spec.workdir } : {}),
      pooled: true,
    });
    try {
      for (const lang of this.spec.prestart ?? ["python"]) await session.prestart(lang);
    } catch (err) {
      await session.destroy().catch(() => undefined);
      throw err;
    }
    return session;
  }

  /** Create until `size` wait ready, one at a time, in the background. */
  private fill(): void {
    if (this.filling || this.closed) return;
    this.filling = (async () => {
      let consecutiveFailures = 0;
      while (!this.closed && this.ready.length < this.spec.size && consecutiveFailures < 3) {
        this.creating = 1;
        this.writeState();
        try {
          const s = await this.createOne();
          if (this.closed) {
            await s.destroy().catch(() => undefined);
            break;
          }
          this.ready.push(s);
          consecutiveFailures = 0;
        } catch (err) {
          this.failures++;
          consecutiveFailures++;
          this.lastError = err instanceof Error ? err.message : String(err);
          await new Promise((r) => setTimeout(r, 200 * consecutiveFailures));
        }
      }
      this.creating = 0;
      this.gaveUp = consecutiveFailures >= 3;
      this.writeState();
    })().finally(() => {
      this.filling = null;
      // A hand-out between the loop's last check and here must still be replaced.
      if (!this.closed && !this.gaveUp && this.ready.length < this.spec.size) this.fill();
    });
  }

  /**
   * A sandbox for a caller: a pooled one if one is ready (adopted with the caller's
   * options), else a fresh one (a miss). Either way the pool refills behind it.
   */
  async take(options: TakeOptions = {}): Promise<Session> {
    if (this.closed) throw new CorralError("invalid_argument", "the warm pool is closed");
    checkKeys(options, TAKE_KEYS, "take options");
    const { idleTtl, ...rest } = options;
    let opts: AdoptOptions = rest;
    if (idleTtl !== undefined) {
      if (rest.idleTtlMs !== undefined && rest.idleTtlMs !== idleTtl) {
        throw new CorralError("invalid_argument", "give idleTtl or idleTtlMs, not both");
      }
      opts = { ...rest, idleTtlMs: idleTtl };
    }
    this.gaveUp = false;
    const userOnEnd = opts.onEnd;
    let session: Session | null = null;
    opts = {
      ...opts,
      onEnd: (reason) => {
        if (session) this.live.delete(session);
        userOnEnd?.(reason);
        this.maybeRelease();
      },
    };
    this.taking++;
    try {
      session = await this.takeOne(opts);
      if (session.endReason === null) this.live.add(session);
      return session;
    } finally {
      this.taking--;
      this.maybeRelease();
    }
  }

  /**
   * The host goes once the pool is closed (its refill ended, its waiting sandboxes gone:
   * `drained`) and every session it handed out has ended, whichever comes last. Before
   * that, a session ending must not take the host from under a refill still creating,
   * nor may a close take it from under a take still creating (`taking`).
   */
  private maybeRelease(): void {
    if (this.drained && this.live.size === 0 && this.taking === 0 && this.releaseHost) {
      const release = this.releaseHost;
      this.releaseHost = null;
      release();
    }
  }

  private async takeOne(opts: AdoptOptions): Promise<Session> {
    while (this.ready.length > 0) {
      const s = this.ready.shift() as Session;
      if (s.endReason !== null || !s.sandbox.running) {
        await s.destroy().catch(() => undefined);
        continue;
      }
      this.handedOut++;
      this.fill();
      try {
        await s.adopt(opts);
      } catch (err) {
        await s.destroy().catch(() => undefined);
        throw err;
      }
      this.writeState();
      return s;
    }
    this.misses++;
    this.fill();
    const s = await Session.create(this.host, {
      image: this.spec.image,
      limits: this.spec.limits,
      ...(this.spec.workdir ? { workdir: this.spec.workdir } : {}),
      ...opts,
    });
    this.writeState();
    return s;
  }

  state(): WarmPoolState {
    return {
      key: this.key,
      image: this.spec.image.digest,
      size: this.spec.size,
      ready: this.ready.length,
      creating: this.creating,
      handedOut: this.handedOut,
      misses: this.misses,
      failures: this.failures,
      lastError: this.lastError,
      pid: process.pid,
      updatedAt: new Date().toISOString(),
    };
  }

  /** For `corral doctor` in another process: one small JSON file per pool and process. */
  private writeState(): void {
    if (this.closed) return;
    try {
      mkdirSync(path.dirname(this.stateFile), { recursive: true, mode: 0o700 });
      writeFileSync(this.stateFile, `${JSON.stringify(this.state())}\n`);
    } catch {
      // the state file is informative only
    }
  }

  /**
   * Destroy every waiting sandbox; sessions already handed out are their callers'. A
   * second call waits for the first.
   */
  close(): Promise<void> {
    this.closing ??= this.drain();
    return this.closing;
  }

  private closing: Promise<void> | null = null;

  private async drain(): Promise<void> {
    this.closed = true;
    await this.filling;
    const waiting = this.ready.splice(0);
    await Promise.all(waiting.map((s) => s.destroy().catch(() => undefined)));
    rmSync(this.stateFile, { force: true });
    this.drained = true;
    this.maybeRelease();
  }
}
