/**
 * Sessions: long-lived sandboxes that keep state between calls, in E2B's model. A
 * session owns one sandbox, its code contexts (one stateful kernel each, started on first
 * use) and the commands it runs. It ends at its hard deadline (`timeoutMs`, E2B's
 * sandbox timeout), after `idleTtlMs` without activity (the idle timer does not run while
 * a call or a command is active), or on `destroy()`; destruction purges all state.
 *
 * One-shot `corral run` stays create → run → destroy on the same Sandbox; a session adds
 * contexts (stateful kernels under the supervisor's keepers) on top of it.
 */
import { asCorralError, CorralError } from "../core/errors.js";
import { parseMaxFileBytes } from "../core/files.js";
import type { Limits } from "../core/limits.js";
import type { ImageRef } from "../core/sandbox.js";
import { type ContextLanguage, parseContextLanguage } from "../kernels/kernels.js";
import { CodeContext, type ContextInfo, type Execution, type RunOptions } from "./context.js";
import { SessionFiles } from "./files.js";
import type { Host } from "./host.js";
import { type StreamResult, streamResult } from "./run-code.js";
import { SUPERVISOR_PATH_IN_SANDBOX } from "./runtime/oci-spec.js";
import { Sandbox } from "./sandbox.js";
import { type DecodedChunk, Utf8Stream } from "./utf8-stream.js";

export const DEFAULT_IDLE_TTL_MS = 300_000;
export const DEFAULT_CALL_TIMEOUT_MS = 60_000;
export const DEFAULT_WORKDIR = "/work";

export interface SessionOptions {
  image: ImageRef;
  limits: Limits;
  /** Environment for every context and command of the session. */
  envs?: Record<string, string>;
  /** The caller's own labels, kept with the session. */
  metadata?: Record<string, string>;
  /** Hard deadline from creation (E2B's timeoutMs); none if unset. */
  timeoutMs?: number;
  /** Destroyed after this long without a call, stream or command (default 300 s). */
  idleTtlMs?: number;
  /** Where code runs (default /work); it must exist in the image. */
  workdir?: string;
  /** The file API's size cap per file, read or written (default 100 MiB). */
  maxFileBytes?: number;
  /** Called once the session has ended and its sandbox is gone. */
  onEnd?: (reason: SessionEndReason) => void;
}

export interface RunCodeOptions extends Partial<Omit<RunOptions, "outputCapBytes">> {
  /** A context id (from createCodeContext); else the session's default for the language. */
  context?: string;
  language?: string;
}

export interface CommandOptions {
  cwd?: string;
  envs?: Record<string, string>;
  timeoutMs?: number;
  /** Bytes for the command's stdin (closed after them); otherwise stdin is /dev/null. */
  stdin?: string | Buffer;
  onStdout?: (chunk: DecodedChunk) => void;
  onStderr?: (chunk: DecodedChunk) => void;
}

export interface CommandResult {
  stdout: StreamResult;
  stderr: StreamResult;
  exitCode: number;
  killed: "timeout" | "oom" | null;
  durationMs: number;
  cpuMs: number | null;
}

export type SessionEndReason = "destroyed" | "timeout" | "idle" | "sandbox_killed";

function checkEnvs(envs: Record<string, string> | undefined, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(envs ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) {
      throw new CorralError(
        "invalid_argument",
        `invalid environment variable name "${k}" in ${what}`,
      );
    }
    if (typeof v !== "string" || v.includes("\0")) {
      throw new CorralError(
        "invalid_argument",
        `environment variable ${k} in ${what} must be a string without NUL`,
      );
    }
    out[k] = v;
  }
  return out;
}

export class Session {
  readonly id: string;
  readonly metadata: Record<string, string>;
  readonly workdir: string;
  private readonly contexts = new Map<string, CodeContext>();
  private readonly defaults = new Map<ContextLanguage, CodeContext>();
  private activeCommands = 0;
  private activeFileOps = 0;
  private idleTimer: NodeJS.Timeout | null = null;
  private deadlineTimer: NodeJS.Timeout | null = null;
  private deadline: number | null = null;
  private ended: SessionEndReason | null = null;
  private destroying: Promise<void> | null = null;
  readonly commands: {
    run: (cmd: string | string[], opts?: CommandOptions) => Promise<CommandResult>;
  };
  /** The sandbox's files, read and written from inside it by its supervisor (files.ts). */
  readonly files: SessionFiles;

  private constructor(
    readonly host: Host,
    readonly sandbox: Sandbox,
    private readonly options: SessionOptions,
    private readonly envs: Record<string, string>,
  ) {
    this.id = sandbox.id;
    this.metadata = { ...(options.metadata ?? {}) };
    this.workdir = options.workdir ?? DEFAULT_WORKDIR;
    this.commands = { run: (cmd, opts) => this.runCommand(cmd, opts ?? {}) };
    this.files = new SessionFiles({
      client: () => {
        this.requireLive();
        return this.sandbox.fileClient();
      },
      workdir: this.workdir,
      maxFileBytes: parseMaxFileBytes(options.maxFileBytes),
      record: (kind, details, outcome) =>
        this.host.events.emit({
          principal: this.host.config.principal,
          sandbox: this.id,
          kind,
          details,
          outcome,
        }),
      activity: () => {
        this.activeFileOps++;
        this.pauseIdle();
        let done = false;
        return () => {
          if (done) return;
          done = true;
          this.activeFileOps--;
          this.touch();
        };
      },
    });
  }

  static async create(host: Host, options: SessionOptions): Promise<Session> {
    const envs = checkEnvs(options.envs, "envs");
    parseMaxFileBytes(options.maxFileBytes);
    const workdir = options.workdir ?? DEFAULT_WORKDIR;
    if (!workdir.startsWith("/")) {
      throw new CorralError(
        "invalid_argument",
        `workdir must be an absolute path, not "${workdir}"`,
      );
    }
    for (const [k, v] of [
      ["timeoutMs", options.timeoutMs],
      ["idleTtlMs", options.idleTtlMs],
    ] as const) {
      if (v !== undefined && (!Number.isFinite(v) || v <= 0)) {
        throw new CorralError("invalid_argument", `${k} must be a positive number of milliseconds`);
      }
    }
    const sandbox = await Sandbox.create(host, { image: options.image, limits: options.limits });
    const session = new Session(host, sandbox, options, envs);
    try {
      await session.checkWorkdir(workdir);
    } catch (err) {
      await sandbox.destroy().catch(() => undefined);
      throw err;
    }
    if (options.timeoutMs !== undefined) session.setTimeout(options.timeoutMs);
    session.touch();
    return session;
  }

  /** The workdir must exist: a chdir into it by the static supervisor binary tells. */
  private async checkWorkdir(workdir: string): Promise<void> {
    const out = await this.sandbox
      .exec({
        argv: [SUPERVISOR_PATH_IN_SANDBOX, "--version"],
        cwd: workdir,
        timeoutMs: 10_000,
        outputCapBytes: 4096,
      })
      .catch((err: unknown) => asCorralError(err));
    if (out instanceof CorralError) {
      throw new CorralError(
        "invalid_argument",
        `workdir ${workdir} does not exist in the image (${out.message.replace(/^chdir [^:]*: /, "")})`,
        "create it in the image, or choose another workdir",
      );
    }
  }

  get endReason(): SessionEndReason | null {
    return this.ended;
  }

  /** Environment of every kernel and command: the image's, then Corral's, then the session's. */
  private baseEnv(): Record<string, string> {
    return { ...this.sandbox.spec.image.env, HOME: "/root", LANG: "C.UTF-8", ...this.envs };
  }

  private requireLive(): void {
    if (this.ended) {
      throw new CorralError("not_found", `session ${this.id} has ended (${this.ended})`);
    }
  }

  private contextHost() {
    return {
      sandbox: this.sandbox,
      env: () => this.baseEnv(),
      usage: () => this.sandbox.cgroup.usage(),
      onSandboxKilled: () => {
        void this.end("sandbox_killed");
      },
    };
  }

  createCodeContext(
    opts: { language?: string; cwd?: string; envs?: Record<string, string> } = {},
  ): ContextInfo {
    this.requireLive();
    const language = parseContextLanguage(opts.language ?? "python");
    const cwd = opts.cwd ?? this.workdir;
    if (!cwd.startsWith("/"))
      throw new CorralError("invalid_argument", `cwd must be absolute, not "${cwd}"`);
    const ctx = new CodeContext(
      this.contextHost(),
      language,
      cwd,
      checkEnvs(opts.envs, "the context's envs"),
    );
    this.contexts.set(ctx.id, ctx);
    return ctx.info();
  }

  listCodeContexts(): ContextInfo[] {
    return [...this.contexts.values()].map((c) => c.info());
  }

  private context(id: string): CodeContext {
    const ctx = this.contexts.get(id);
    if (!ctx) throw new CorralError("not_found", `no context "${id}" in session ${this.id}`);
    return ctx;
  }

  async restartCodeContext(id: string): Promise<void> {
    this.requireLive();
    await this.context(id).restart();
  }

  async removeCodeContext(id: string): Promise<void> {
    const ctx = this.context(id);
    this.contexts.delete(id);
    for (const [lang, c] of this.defaults) if (c === ctx) this.defaults.delete(lang);
    await ctx.remove();
  }

  private defaultContext(language: ContextLanguage): CodeContext {
    let ctx = this.defaults.get(language);
    if (!ctx) {
      ctx = new CodeContext(this.contextHost(), language, this.workdir, {}, `default-${language}`);
      this.defaults.set(language, ctx);
      this.contexts.set(ctx.id, ctx);
    }
    return ctx;
  }

  async runCode(code: string, opts: RunCodeOptions = {}): Promise<Execution> {
    this.requireLive();
    if (typeof code !== "string")
      throw new CorralError("invalid_argument", "code must be a string");
    const ctx = opts.context
      ? this.context(opts.context)
      : this.defaultContext(parseContextLanguage(opts.language ?? "python"));
    if (opts.context && opts.language && parseContextLanguage(opts.language) !== ctx.language) {
      throw new CorralError(
        "invalid_argument",
        `context ${ctx.id} runs ${ctx.language}, not ${parseContextLanguage(opts.language)}`,
      );
    }
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      throw new CorralError(
        "invalid_argument",
        "timeoutMs must be a positive number of milliseconds",
      );
    }
    const run: RunOptions = {
      ...opts,
      timeoutMs,
      envs: checkEnvs(opts.envs, "the call's envs"),
      outputCapBytes: this.options.limits.outputCapBytes,
    };
    this.pauseIdle();
    try {
      return await ctx.run(code, run);
    } finally {
      this.touch();
    }
  }

  private async runCommand(cmd: string | string[], opts: CommandOptions): Promise<CommandResult> {
    this.requireLive();
    const argv = typeof cmd === "string" ? ["bash", "-c", cmd] : cmd;
    if (!Array.isArray(argv) || argv.length === 0 || argv.some((a) => typeof a !== "string")) {
      throw new CorralError(
        "invalid_argument",
        "a command is a string or a non-empty array of strings",
      );
    }
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    const decoders = { out: new Utf8Stream(), err: new Utf8Stream() };
    this.activeCommands++;
    this.pauseIdle();
    try {
      const started = performance.now();
      const outcome = await this.sandbox.exec({
        argv,
        env: { ...this.envs, ...checkEnvs(opts.envs, "the command's envs") },
        cwd: opts.cwd ?? this.workdir,
        timeoutMs,
        outputCapBytes: this.options.limits.outputCapBytes,
        ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}),
        onStdout: (c) => {
          const d = decoders.out.push(c);
          if (d.text || d.base64) opts.onStdout?.(d);
        },
        onStderr: (c) => {
          const d = decoders.err.push(c);
          if (d.text || d.base64) opts.onStderr?.(d);
        },
      });
      for (const [d, cb] of [
        [decoders.out, opts.onStdout],
        [decoders.err, opts.onStderr],
      ] as const) {
        const rest = d.end();
        if (rest.text || rest.base64) cb?.(rest);
      }
      if (outcome.sandboxKilled) void this.end("sandbox_killed");
      return {
        stdout: streamResult(outcome.stdout.bytes(), outcome.stdout.total),
        stderr: streamResult(outcome.stderr.bytes(), outcome.stderr.total),
        exitCode: outcome.exitCode,
        killed: outcome.killed,
        durationMs: Math.round((performance.now() - started) * 10) / 10,
        cpuMs: outcome.usage.cpuUs === null ? null : Math.round(outcome.usage.cpuUs / 100) / 10,
      };
    } finally {
      this.activeCommands--;
      this.touch();
    }
  }

  /** Set (or move) the hard deadline to `ms` from now, as E2B's setTimeout does. */
  setTimeout(ms: number): void {
    this.requireLive();
    if (!Number.isFinite(ms) || ms <= 0) {
      throw new CorralError(
        "invalid_argument",
        "the timeout must be a positive number of milliseconds",
      );
    }
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadline = Date.now() + ms;
    this.deadlineTimer = setTimeout(() => void this.end("timeout"), ms);
    this.deadlineTimer.unref();
  }

  /** When the session ends at the latest (its hard deadline), or null for none. */
  get deadlineAt(): Date | null {
    return this.deadline === null ? null : new Date(this.deadline);
  }

  /** Activity without a call: restart the idle timer. */
  keepAlive(): void {
    this.requireLive();
    this.touch();
  }

  private busy(): boolean {
    if (this.activeCommands > 0 || this.activeFileOps > 0) return true;
    for (const c of this.contexts.values()) if (c.pending > 0) return true;
    return false;
  }

  private pauseIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }

  /** Restart the idle timer, unless something is still running. */
  private touch(): void {
    this.pauseIdle();
    if (this.ended || this.busy()) return;
    const ttl = this.options.idleTtlMs ?? DEFAULT_IDLE_TTL_MS;
    this.idleTimer = setTimeout(() => {
      if (!this.busy()) void this.end("idle");
    }, ttl);
    this.idleTimer.unref();
  }

  private end(reason: SessionEndReason): Promise<void> {
    if (!this.destroying) {
      this.ended = reason;
      this.pauseIdle();
      if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
      this.deadlineTimer = null;
      this.host.events.emit({
        principal: this.host.config.principal,
        sandbox: this.id,
        kind: "session.end",
        details: { reason, contexts: this.contexts.size },
        outcome: reason === "sandbox_killed" ? "killed" : "ok",
      });
      this.destroying = this.sandbox.destroy().finally(() => this.options.onEnd?.(reason));
    }
    return this.destroying;
  }

  /** Kill the sandbox and everything in it; all state is gone. */
  destroy(): Promise<void> {
    return this.end("destroyed");
  }
}
