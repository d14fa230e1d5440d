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
import { createHash } from "node:crypto";
import type { Outcome } from "../audit/events.js";
import { asCorralError, CorralError } from "../core/errors.js";
import { parseMaxFileBytes } from "../core/files.js";
import type { Limits } from "../core/limits.js";
import { ENV_NAME } from "../core/run-options.js";
import type { ImageRef } from "../core/sandbox.js";
import { type ContextLanguage, kernelOptions, parseContextLanguage } from "../kernels/kernels.js";
import {
  type CommandHandle,
  type CommandInfo,
  type CommandOptions,
  type CommandResult,
  TrackedCommand,
} from "./commands.js";
import {
  CodeContext,
  type ContextInfo,
  type Execution,
  newExecutionId,
  type RunOptions,
} from "./context.js";
import { type ChangeWindow, FileChangeTracker } from "./file-changes.js";
import { SessionFiles } from "./files.js";
import type { Host } from "./host.js";
import { Sandbox } from "./sandbox.js";

export const DEFAULT_IDLE_TTL_MS = 300_000;
export const DEFAULT_CALL_TIMEOUT_MS = 60_000;
export const DEFAULT_WORKDIR = "/work";
const MAX_CHANGES_IN_EVENT = 1000;
const MAX_PATH_IN_EVENT = 1024;

/** What the audit keeps of code: its digest and size, and its head for a reader. */
function codeDigest(code: string): { sha256: string; bytes: number; head: string } {
  return {
    sha256: createHash("sha256").update(code).digest("hex"),
    bytes: Buffer.byteLength(code),
    head: code.slice(0, 200),
  };
}

function argvSummary(argv: string[]): string[] {
  return argv.slice(0, 32).map((a) => (a.length > 200 ? `${a.slice(0, 200)}...` : a));
}

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
  /** Made for a warm pool: its timers start at `adopt`. */
  pooled?: boolean;
  /** Each closed file-change window, as its `files.changed` event is recorded. */
  onFileChanges?: (window: ChangeWindow) => void;
}

/** What a caller brings when a pooled session is handed out to it. */
export type AdoptOptions = Pick<
  SessionOptions,
  "envs" | "metadata" | "timeoutMs" | "idleTtlMs" | "onEnd" | "onFileChanges"
>;

function checkTimes(options: Pick<SessionOptions, "timeoutMs" | "idleTtlMs">): void {
  for (const [k, v] of [
    ["timeoutMs", options.timeoutMs],
    ["idleTtlMs", options.idleTtlMs],
  ] as const) {
    if (v !== undefined && (!Number.isFinite(v) || v <= 0 || v > MAX_TIMER_MS)) {
      throw new CorralError(
        "invalid_argument",
        `${k} must be a positive number of milliseconds, at most ${MAX_TIMER_MS}`,
      );
    }
  }
}

/** Node's timers hold 32-bit milliseconds: a longer delay would fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface RunCodeOptions
  extends Partial<Omit<RunOptions, "outputCapBytes" | "executionId" | "silent">> {
  /** A context id (from createCodeContext); else the session's default for the language. */
  context?: string;
  language?: string;
  /** The same as `timeoutMs` (the issue's and Jupyter users' name); ms. */
  timeout?: number;
}

/** `timeoutMs`, or its alias `timeout`; both given and different is a mistake. */
function callTimeout(opts: { timeoutMs?: number; timeout?: number }): number | undefined {
  if (
    opts.timeoutMs !== undefined &&
    opts.timeout !== undefined &&
    opts.timeoutMs !== opts.timeout
  ) {
    throw new CorralError("invalid_argument", "give timeoutMs or timeout, not both");
  }
  return opts.timeoutMs ?? opts.timeout;
}

export type { CommandHandle, CommandInfo, CommandOptions, CommandResult } from "./commands.js";

export type SessionEndReason = "destroyed" | "timeout" | "idle" | "sandbox_killed";

function checkEnvs(envs: Record<string, string> | undefined, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(envs ?? {})) {
    if (!ENV_NAME.test(k)) {
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
  metadata: Record<string, string>;
  /** Waiting in a warm pool: no idle timer, no deadline, until `adopt`. */
  private pooled: boolean;
  readonly workdir: string;
  private readonly contexts = new Map<string, CodeContext>();
  private readonly defaults = new Map<ContextLanguage, CodeContext>();
  private readonly commandsRunning = new Set<TrackedCommand>();
  private readonly changes: FileChangeTracker;
  private activeFileOps = 0;
  private idleTimer: NodeJS.Timeout | null = null;
  private deadlineTimer: NodeJS.Timeout | null = null;
  private deadline: number | null = null;
  private ended: SessionEndReason | null = null;
  private destroying: Promise<void> | null = null;
  readonly commands: {
    /** Run to completion; with `background: true`, return a handle once it runs. */
    run: {
      (cmd: string | string[], opts: CommandOptions & { background: true }): Promise<CommandHandle>;
      (cmd: string | string[], opts?: CommandOptions): Promise<CommandResult>;
    };
    /** Start in the background: a handle once the program runs. */
    start: (cmd: string | string[], opts?: CommandOptions) => Promise<CommandHandle>;
    list: () => CommandInfo[];
    kill: (pid: number, signal?: number) => Promise<boolean>;
    connect: (pid: number, opts?: Pick<CommandOptions, "onStdout" | "onStderr">) => CommandHandle;
    sendStdin: (pid: number, data: string | Buffer) => void;
  };
  /** The sandbox's files, read and written from inside it by its supervisor (files.ts). */
  readonly files: SessionFiles;

  private constructor(
    readonly host: Host,
    readonly sandbox: Sandbox,
    private options: SessionOptions,
    private envs: Record<string, string>,
  ) {
    this.id = sandbox.id;
    this.pooled = options.pooled === true;
    this.metadata = { ...(options.metadata ?? {}) };
    this.workdir = options.workdir ?? DEFAULT_WORKDIR;
    this.changes = new FileChangeTracker(sandbox.upperPath(""), sandbox.spec.image.rootfs, (w) => {
      host.events.emit({
        principal: host.config.principal,
        sandbox: sandbox.id,
        kind: "files.changed",
        details: {
          window: { seq: w.seq, from: w.from.toISOString(), to: w.to.toISOString() },
          // The changes belong to the window: with several executions in it, to all of them.
          attribution: w.executions.length === 1 ? "execution" : "window",
          executions: w.executions,
          // Bounded: a hostile layer of long names must not grow the audit log without end.
          changes: w.changes
            .slice(0, MAX_CHANGES_IN_EVENT)
            .map((c) =>
              c.path.length > MAX_PATH_IN_EVENT
                ? { ...c, path: `${c.path.slice(0, MAX_PATH_IN_EVENT)}...` }
                : c,
            ),
          changeCount: w.changes.length,
          truncated: w.truncated || w.changes.length > MAX_CHANGES_IN_EVENT,
        },
        outcome: "ok",
      });
      try {
        this.options.onFileChanges?.(w);
      } catch {
        // a caller's callback failing must not stop the walks
      }
    });
    this.commands = {
      run: ((cmd: string | string[], opts?: CommandOptions) =>
        opts?.background
          ? this.runBackground(cmd, opts)
          : this.runCommand(cmd, opts ?? {})) as Session["commands"]["run"],
      start: (cmd, opts) => this.runBackground(cmd, { ...opts, background: true }),
      list: () => this.listCommands(),
      kill: (pid, signal) => this.killCommand(pid, signal),
      connect: (pid, opts) => this.connectCommand(pid, opts),
      sendStdin: (pid, data) => this.connectCommand(pid).sendStdin(data),
    };
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
    checkTimes(options);
    const sandbox = await Sandbox.create(host, { image: options.image, limits: options.limits });
    const session = new Session(host, sandbox, options, envs);
    try {
      await session.changes.init();
      await session.checkWorkdir(workdir);
    } catch (err) {
      await sandbox.destroy().catch(() => undefined);
      throw err;
    }
    if (options.timeoutMs !== undefined && !session.pooled) session.setTimeout(options.timeoutMs);
    session.touch();
    return session;
  }

  /** Start a language's default kernel now, so that the first call does not wait for it. */
  async prestart(language: ContextLanguage = "python"): Promise<void> {
    this.requireLive();
    await this.defaultContext(language).warm();
  }

  /** Whether the session waits in a pool, unclaimed. */
  get isPooled(): boolean {
    return this.pooled;
  }

  /**
   * Hand a pooled session to its caller: its environment (also into kernels already
   * running), labels, deadline and idle TTL; from now on its timers run.
   */
  async adopt(opts: AdoptOptions): Promise<void> {
    this.requireLive();
    if (!this.pooled)
      throw new CorralError("invalid_argument", `session ${this.id} is not in a pool`);
    checkTimes(opts);
    const envs = checkEnvs(opts.envs, "envs");
    this.pooled = false;
    this.envs = envs;
    this.metadata = { ...(opts.metadata ?? {}) };
    this.options = { ...this.options, ...opts, pooled: false };
    if (Object.keys(envs).length > 0) {
      for (const ctx of this.contexts.values()) await ctx.setEnv(envs);
    }
    if (opts.timeoutMs !== undefined) this.setTimeout(opts.timeoutMs);
    this.touch();
  }

  /** The workdir must exist: the supervisor stats it, confined to the sandbox's root. */
  private async checkWorkdir(workdir: string): Promise<void> {
    const st = await this.sandbox
      .fileClient()
      .fileStat(workdir, true)
      .catch((err: unknown) => asCorralError(err));
    if (st instanceof CorralError || st.type !== "dir") {
      throw new CorralError(
        "invalid_argument",
        `workdir ${workdir} does not exist in the image (${st instanceof CorralError ? st.message : `a ${st.type}, not a directory`})`,
        "create it in the image, or choose another workdir",
      );
    }
  }

  get endReason(): SessionEndReason | null {
    return this.ended;
  }

  /** Environment of every kernel and command: the image's, then Corral's, then the session's. */
  private baseEnv(): Record<string, string> {
    return { ...this.sandbox.baseEnv(), ...this.envs };
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
      endReason: () => this.ended,
    };
  }

  createCodeContext(
    opts: {
      language?: string;
      cwd?: string;
      envs?: Record<string, string>;
      /** SQL only: the database file (default /work/db.sqlite), or ":memory:". */
      database?: string;
    } = {},
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
      undefined,
      kernelOptions(language, opts.database),
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
      ctx = new CodeContext(
        this.contextHost(),
        language,
        this.workdir,
        {},
        `default-${language}`,
        kernelOptions(language, undefined),
      );
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
    const timeoutMs = callTimeout(opts) ?? DEFAULT_CALL_TIMEOUT_MS;
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
      executionId: newExecutionId(),
    };
    const id = run.executionId as string;
    this.pauseIdle();
    this.changes.begin(id);
    try {
      const execution = await ctx.run(code, run);
      this.audit(id, execution.killed ?? (execution.error ? "error" : "ok"), {
        context: execution.context,
        language: execution.language,
        code: codeDigest(code),
        executionCount: execution.executionCount,
        exitCode: execution.exitCode,
        error: execution.error?.ename ?? null,
        killed: execution.killed,
        stateLost: execution.stateLost,
        sandboxKilled: execution.sandboxKilled,
        durationMs: execution.durationMs,
        cpuMs: execution.cpuMs,
        peakMemoryBytes: execution.peakMemoryBytes,
        stdoutBytes: execution.stdout.bytes,
        stderrBytes: execution.stderr.bytes,
        results: execution.results.length,
      });
      return execution;
    } finally {
      this.changes.finish(id);
      this.touch();
    }
  }

  /** One audit event per execution: who, what (a digest of the code), resources, outcome. */
  private audit(id: string, outcome: Outcome, details: Record<string, unknown>): void {
    this.host.events.emit({
      principal: this.host.config.principal,
      sandbox: this.id,
      kind: "exec",
      details: { execution: id, ...details },
      outcome,
    });
  }

  /**
   * The file changes of the window in which an execution ran (walking the layer now if
   * that window is still open); null if the execution is unknown or too old.
   */
  async fileChanges(executionId: string): Promise<ChangeWindow | null> {
    return this.changes.windowOf(executionId);
  }

  /** Start a command: a string runs under `bash -c`, an array runs with no shell. */
  private startCommand(cmd: string | string[], opts: CommandOptions): TrackedCommand {
    this.requireLive();
    const argv = typeof cmd === "string" ? ["bash", "-c", cmd] : cmd;
    if (!Array.isArray(argv) || argv.length === 0 || argv.some((a) => typeof a !== "string")) {
      throw new CorralError(
        "invalid_argument",
        "a command is a string or a non-empty array of strings",
      );
    }
    const timeoutMs = callTimeout(opts) ?? DEFAULT_CALL_TIMEOUT_MS;
    if (!Number.isFinite(timeoutMs) || timeoutMs < 0) {
      throw new CorralError(
        "invalid_argument",
        "timeoutMs must be a number of milliseconds (0: no timeout)",
      );
    }
    const envs = checkEnvs(opts.envs, "the command's envs");
    const cwd = opts.cwd ?? this.workdir;
    const tracked = new TrackedCommand(newExecutionId(), cmd, cwd, opts);
    const stdin =
      typeof opts.stdin === "string" || Buffer.isBuffer(opts.stdin)
        ? { stdin: opts.stdin }
        : { stdinPipe: opts.stdin === true };
    const proc = this.sandbox.start({
      argv,
      env: { ...this.envs, ...envs },
      cwd,
      timeoutMs,
      outputCapBytes: this.options.limits.outputCapBytes,
      ...stdin,
      onStdout: (c) => tracked.output("stdout", c),
      onStderr: (c) => tracked.output("stderr", c),
    });
    tracked.attach(proc);
    this.commandsRunning.add(tracked);
    this.changes.begin(tracked.id);
    this.pauseIdle();
    void proc.pid.then(
      (pid) => {
        tracked.pid = pid;
      },
      () => undefined,
    );
    tracked.done = proc.outcome
      .then((outcome) => {
        if (outcome.sandboxKilled) void this.end("sandbox_killed");
        const result = tracked.finish(outcome);
        this.audit(tracked.id, result.killed ?? (result.exitCode === 0 ? "ok" : "error"), {
          command: typeof cmd === "string" ? codeDigest(cmd) : { argv: argvSummary(cmd) },
          cwd,
          background: opts.background === true,
          exitCode: result.exitCode,
          killed: result.killed,
          durationMs: result.durationMs,
          cpuMs: result.cpuMs,
          peakMemoryBytes: result.peakMemoryBytes,
          stdoutBytes: result.stdout.bytes,
          stderrBytes: result.stderr.bytes,
        });
        return result;
      })
      .finally(() => {
        this.commandsRunning.delete(tracked);
        this.changes.finish(tracked.id);
        this.touch();
      });
    // A background command's result may never be asked for: its failure is not unhandled.
    tracked.done.catch(() => undefined);
    return tracked;
  }

  private async runCommand(cmd: string | string[], opts: CommandOptions): Promise<CommandResult> {
    return this.startCommand(cmd, opts).done;
  }

  private async runBackground(
    cmd: string | string[],
    opts: CommandOptions,
  ): Promise<CommandHandle> {
    const tracked = this.startCommand(cmd, opts);
    try {
      await tracked.started();
    } catch (err) {
      await tracked.done.catch(() => undefined);
      throw asCorralError(err);
    }
    return tracked.handle(opts);
  }

  private trackedByPid(pid: number): TrackedCommand {
    for (const t of this.commandsRunning) if (t.pid === pid) return t;
    throw new CorralError("not_found", `no running command with pid ${pid} in session ${this.id}`);
  }

  /** The commands that run now, started through this session. */
  private listCommands(): CommandInfo[] {
    return [...this.commandsRunning]
      .filter((t) => t.pid !== null)
      .map((t) => ({ pid: t.pid as number, cmd: t.cmd, cwd: t.cwd, startedAt: t.startedAt }));
  }

  /** Send a signal (default SIGKILL) to a running command's process group. */
  private killCommand(pid: number, signal = 9): Promise<boolean> {
    this.requireLive();
    for (const t of this.commandsRunning) if (t.pid === pid) return t.handle({}).kill(signal);
    return Promise.resolve(false);
  }

  /** Re-attach to a running command: what it printed so far, then what it prints next. */
  private connectCommand(
    pid: number,
    opts: Pick<CommandOptions, "onStdout" | "onStderr"> = {},
  ): CommandHandle {
    this.requireLive();
    return this.trackedByPid(pid).handle(opts, true);
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
    if (this.commandsRunning.size > 0 || this.activeFileOps > 0) return true;
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
    if (this.ended || this.pooled || this.busy()) return;
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
      this.destroying = this.finalize().finally(() => this.options.onEnd?.(reason));
    }
    return this.destroying;
  }

  /** Stop every process, take the last file changes, then remove the sandbox. */
  private async finalize(): Promise<void> {
    try {
      await this.sandbox.stop();
      await this.changes.close();
    } catch {
      // destroy below reports what matters: whether the sandbox is gone
    }
    await this.sandbox.destroy();
  }

  /** Kill the sandbox and everything in it; all state is gone. */
  destroy(): Promise<void> {
    return this.end("destroyed");
  }
}
