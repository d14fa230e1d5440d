/**
 * A code context: one stateful kernel (Python, R, shell, SQL) inside a session's
 * sandbox. Its kernel starts on first use, runs one call at a time (later calls wait
 * their turn, in order), and is replaced by a fresh one after it dies: the caller is
 * told that the state was lost, and the next call gets a new kernel.
 */
import { randomBytes } from "node:crypto";
import { asCorralError, CorralError } from "../core/errors.js";
import {
  type ContextLanguage,
  type ExecutionError,
  KERNELS,
  type KernelDef,
  type KernelEnd,
  type KernelOptions,
  type MimeBundle,
} from "../kernels/kernels.js";
import type { CallDone, ContextChannel, ExitInfo } from "../supervisor/client.js";
import { type StreamResult, streamResult } from "./run-code.js";
import type { CgroupUsage } from "./runtime/cgroups.js";
import { CappedOutput, type Sandbox } from "./sandbox.js";
import type { SessionEndReason } from "./session.js";
import { type DecodedChunk, Utf8Stream } from "./utf8-stream.js";

/** One rich output of a call, in Jupyter's shape. */
export interface RichResult {
  /** "result": the value of the last expression (execute_result); "display": display(). */
  kind: "result" | "display";
  data: MimeBundle;
  metadata: Record<string, unknown>;
  /** E2B's name for kind === "result". */
  isMainResult: boolean;
}

export type ExecEvent =
  | ({ type: "stdout" } & DecodedChunk)
  | ({ type: "stderr" } & DecodedChunk)
  | { type: "result"; result: RichResult }
  | { type: "error"; error: ExecutionError }
  | { type: "end"; execution: Execution };

export interface Execution {
  /** Names this call in events and in the session's file-change windows. */
  id: string;
  context: string;
  language: ContextLanguage;
  results: RichResult[];
  stdout: StreamResult;
  stderr: StreamResult;
  error: ExecutionError | null;
  /** Python: the cell's execution count. */
  executionCount: number | null;
  /** Shell: the exit status of the code. */
  exitCode: number | null;
  killed: "timeout" | "oom" | null;
  /** The kernel died or was killed: its variables are gone; the next call starts afresh. */
  stateLost: boolean;
  /** The call's processes could not be contained: the whole sandbox was killed. */
  sandboxKilled: boolean;
  durationMs: number;
  cpuMs: number | null;
  peakMemoryBytes: number | null;
}

export interface RunOptions {
  timeoutMs: number;
  /** The session's id for this call (exec-...); one is made if absent. */
  executionId?: string;
  /** A warm-up: not counted, not kept in history, nothing displayed. */
  silent?: boolean;
  envs?: Record<string, string>;
  outputCapBytes: number;
  onStdout?: (chunk: DecodedChunk) => void;
  onStderr?: (chunk: DecodedChunk) => void;
  onResult?: (result: RichResult) => void;
  onError?: (error: ExecutionError) => void;
  onEvent?: (event: ExecEvent) => void;
}

export interface ContextInfo {
  id: string;
  language: ContextLanguage;
  cwd: string;
  /** SQL contexts: the database file their connection is on. */
  database?: string;
}

/** The hooks a context needs from its session. */
export interface ContextHost {
  sandbox: Sandbox;
  /** Environment of every kernel (image env, HOME, LANG, the session's envs). */
  env(): Record<string, string>;
  usage(): Promise<CgroupUsage>;
  /** The sandbox was killed from inside (the sweeps failed): the session is over. */
  onSandboxKilled(): void;
  /** Why the session ended, once it has (a call cut short by that says so). */
  endReason(): SessionEndReason | null;
}

const KERNEL_START_TIMEOUT_MS = 60_000;

/** Why a call's sandbox went away under it, for the call's error. */
export function sandboxGoneMessage(reason: SessionEndReason | null): string {
  switch (reason) {
    case "timeout":
      return "the session reached its timeout (timeoutMs) and was destroyed during the call: its state is gone";
    case "destroyed":
      return "the session was destroyed during the call: its state is gone";
    case "idle":
      return "the session idled out during the call: its state is gone";
    default:
      return "the call's processes could not be stopped at its deadline: the sandbox was killed and its state lost";
  }
}
/** Per call: rich outputs kept (beyond them, a marker says how many were dropped). */
export const MAX_RESULTS = 1000;
export const MAX_RESULT_BYTES = 64 * 1024 * 1024;

export function newExecutionId(): string {
  return `exec-${randomBytes(6).toString("hex")}`;
}

export function newContextId(): string {
  return `ctx-${randomBytes(6).toString("hex")}`;
}

function signalName(n: number): string {
  const names: Record<number, string> = {
    9: "SIGKILL",
    6: "SIGABRT",
    11: "SIGSEGV",
    15: "SIGTERM",
    2: "SIGINT",
  };
  return names[n] ?? `signal ${n}`;
}

export function describeKernelExit(language: ContextLanguage, exit: ExitInfo | null): string {
  const how =
    exit === null
      ? "it stopped answering and was killed"
      : exit.how === "signaled"
        ? `killed by ${signalName(exit.code)}`
        : `exit status ${exit.code}`;
  return `the ${language} kernel died (${how}); its state was lost, the next call starts a fresh kernel`;
}

export class CodeContext {
  readonly id: string;
  readonly kernel: KernelDef;
  private channel: ContextChannel | null = null;
  private starting: Promise<ContextChannel> | null = null;
  private tail: Promise<unknown> = Promise.resolve();
  private removed = false;
  /** Calls waiting or running (the session's idle timer does not run while > 0). */
  pending = 0;

  constructor(
    private readonly host: ContextHost,
    readonly language: ContextLanguage,
    readonly cwd: string,
    private readonly envs: Record<string, string>,
    id?: string,
    private readonly options: KernelOptions = {},
  ) {
    this.id = id ?? newContextId();
    this.kernel = KERNELS[language];
  }

  info(): ContextInfo {
    return {
      id: this.id,
      language: this.language,
      cwd: this.cwd,
      ...(this.options.database !== undefined ? { database: this.options.database } : {}),
    };
  }

  get kernelRunning(): boolean {
    return this.channel !== null;
  }

  /** Start the kernel (if it is not running) and wait until it said it is ready. */
  private ensureKernel(): Promise<ContextChannel> {
    if (this.channel) return Promise.resolve(this.channel);
    if (this.starting) return this.starting;
    const start = async (): Promise<ContextChannel> => {
      let readyResolve!: () => void;
      const ready = new Promise<void>((r) => {
        readyResolve = r;
      });
      const ch = this.host.sandbox.startContext({
        argv: this.kernel.argv(this.options),
        env: { ...this.host.env(), ...this.envs },
        cwd: this.cwd,
        interruptSignal: this.kernel.interruptSignal,
        onIdleMessage: (payload) => {
          if (payload[0] === 1 && this.kernel.decodeEvent(payload.subarray(1))?.type === "ready")
            readyResolve();
        },
      });
      try {
        await ch.started;
      } catch (err) {
        throw new CorralError(
          "runtime_failed",
          `cannot start the ${this.language} kernel: ${asCorralError(err).message}`,
        );
      }
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        ready.then(() => "ready" as const),
        ch.exited.then(
          (exit) => exit,
          () => null,
        ),
        new Promise<"timeout">((r) => {
          timer = setTimeout(() => r("timeout"), KERNEL_START_TIMEOUT_MS);
        }),
      ]);
      clearTimeout(timer);
      if (outcome !== "ready") {
        ch.stop();
        throw new CorralError(
          "runtime_failed",
          outcome === "timeout"
            ? `the ${this.language} kernel did not start within ${KERNEL_START_TIMEOUT_MS / 1000} s`
            : `the ${this.language} kernel exited while starting (${outcome === null ? "sandbox gone" : describeKernelExit(this.language, outcome)})`,
        );
      }
      // Once the kernel is gone, the next call starts a new one.
      void ch.exited.then(
        () => this.forget(ch),
        () => this.forget(ch),
      );
      this.channel = ch;
      return ch;
    };
    this.starting = start().finally(() => {
      this.starting = null;
    });
    return this.starting;
  }

  private forget(ch: ContextChannel): void {
    if (this.channel === ch) this.channel = null;
  }

  /** Run code; calls on one context run one after another, in the order they came. */
  run(code: string, opts: RunOptions): Promise<Execution> {
    if (this.removed)
      return Promise.reject(new CorralError("not_found", `context ${this.id} was removed`));
    this.pending++;
    const run = this.tail.then(() => this.runNow(code, opts));
    this.tail = run.catch(() => undefined);
    return run.finally(() => {
      this.pending--;
    });
  }

  private async runNow(code: string, opts: RunOptions): Promise<Execution> {
    if (this.removed) throw new CorralError("not_found", `context ${this.id} was removed`);
    const request = this.kernel.encodeRequest(code, opts.envs ?? {}, opts.silent);
    const started = performance.now();
    const ch = await this.ensureKernel();
    // Contexts may run side by side: the window is the sandbox's, from this call's start.
    this.host.sandbox.cgroup.resetPeak();
    const before = await this.host.usage();
    const stdout = new CappedOutput(opts.outputCapBytes);
    const stderr = new CappedOutput(opts.outputCapBytes);
    const decoders = { stdout: new Utf8Stream(), stderr: new Utf8Stream() };
    const results: RichResult[] = [];
    // Rich outputs are capped per call like the streams: in count and in bytes.
    let resultBytes = 0;
    const dropped = { count: 0, bytes: 0 };
    let error: ExecutionError | null = null;
    let end: KernelEnd | null = null;
    const stream = (name: "stdout" | "stderr", capped: CappedOutput, chunk: Buffer) => {
      const part = capped.push(chunk);
      if (part.length === 0) return;
      const decoded = decoders[name].push(part);
      if (decoded.text.length === 0 && decoded.base64 === undefined) return;
      (name === "stdout" ? opts.onStdout : opts.onStderr)?.(decoded);
      opts.onEvent?.({ type: name, ...decoded });
    };
    let done: CallDone;
    try {
      done = await ch.call(request, opts.timeoutMs, {
        onStdout: (c) => stream("stdout", stdout, c),
        onStderr: (c) => stream("stderr", stderr, c),
        onMessage: (payload) => {
          // The frame comes from the user's own kernel process: nothing in it may break
          // the host; what does not decode is dropped.
          try {
            const body = payload.subarray(1);
            if (payload[0] === 2) {
              end = this.kernel.decodeEnd(body);
              return;
            }
            if (resultBytes + body.length > MAX_RESULT_BYTES || results.length >= MAX_RESULTS) {
              dropped.count++;
              dropped.bytes += body.length;
              return;
            }
            const ev = this.kernel.decodeEvent(body);
            if (ev?.type === "result" || ev?.type === "display") {
              resultBytes += body.length;
              const result: RichResult = {
                kind: ev.type,
                data: ev.data,
                metadata: ev.metadata,
                isMainResult: ev.type === "result",
              };
              results.push(result);
              opts.onResult?.(result);
              opts.onEvent?.({ type: "result", result });
            } else if (ev?.type === "error") {
              error ??= ev.error;
              opts.onError?.(ev.error);
              opts.onEvent?.({ type: "error", error: ev.error });
            }
          } catch {
            dropped.count++;
            dropped.bytes += payload.length;
          }
        },
      });
    } catch (err) {
      // The supervisor is gone: so is the sandbox.
      const e = asCorralError(err);
      if (e.code !== "supervisor_failed") throw e;
      this.forget(ch);
      done = { timedOut: false, kernelLost: true, sandboxKilled: true, swept: 0, wallUs: 0 };
    }
    for (const [name, d] of Object.entries(decoders) as ["stdout" | "stderr", Utf8Stream][]) {
      const rest = d.end();
      if (rest.text.length > 0 || rest.base64 !== undefined) {
        (name === "stdout" ? opts.onStdout : opts.onStderr)?.(rest);
        opts.onEvent?.({ type: name, ...rest });
      }
    }
    const after = await this.host.usage();
    const oom = (after.oomKills ?? 0) > (before.oomKills ?? 0);
    let exit: ExitInfo | null = null;
    if (done.kernelLost && !done.sandboxKilled) {
      // The keeper's exit says how the kernel ended (it follows CTX_DONE at once).
      exit = await Promise.race([
        ch.exited.catch(() => null),
        new Promise<null>((r) => setTimeout(() => r(null), 2000)),
      ]);
      this.forget(ch);
    }
    if (done.sandboxKilled) this.host.onSandboxKilled();
    const stateLost = done.kernelLost || done.sandboxKilled;
    // `exit N` in a shell context ends that shell: the call's outcome is exit status N
    // (exact, as in a one-shot run), and the shell's state goes with it.
    const shellExit =
      this.language === "shell" && !done.timedOut && !done.sandboxKilled && exit?.how === "exited";
    if (stateLost && error === null && !shellExit) {
      error = {
        ename: done.sandboxKilled ? "SandboxKilled" : "KernelDied",
        evalue: done.sandboxKilled
          ? sandboxGoneMessage(this.host.endReason())
          : done.timedOut && exit?.how === "signaled" && exit.code === 9 && !oom
            ? `the ${this.language} kernel did not stop at the deadline and was killed; its state was lost, the next call starts a fresh kernel`
            : describeKernelExit(this.language, exit),
        traceback: [],
      };
      opts.onError?.(error);
      opts.onEvent?.({ type: "error", error });
    }
    if (dropped.count > 0) {
      const note: RichResult = {
        kind: "display",
        data: {
          "text/plain": `[corral: ${dropped.count} more output(s), ${dropped.bytes} bytes, dropped: a call keeps at most ${MAX_RESULTS} outputs and ${MAX_RESULT_BYTES} bytes of them]`,
        },
        metadata: { corral: { dropped: dropped.count, droppedBytes: dropped.bytes } },
        isMainResult: false,
      };
      results.push(note);
      opts.onResult?.(note);
      opts.onEvent?.({ type: "result", result: note });
    }
    const finalEnd = end as KernelEnd | null;
    const execution: Execution = {
      id: opts.executionId ?? newExecutionId(),
      context: this.id,
      language: this.language,
      results,
      stdout: streamResult(stdout.bytes(), stdout.total),
      stderr: streamResult(stderr.bytes(), stderr.total),
      error,
      executionCount: finalEnd?.executionCount ?? null,
      exitCode: finalEnd?.exitCode ?? (shellExit && exit ? exit.code : null),
      killed: done.timedOut ? "timeout" : oom ? "oom" : null,
      stateLost,
      sandboxKilled: done.sandboxKilled,
      durationMs: Math.round((performance.now() - started) * 10) / 10,
      cpuMs:
        after.cpuUs === null || before.cpuUs === null
          ? null
          : Math.round((after.cpuUs - before.cpuUs) / 100) / 10,
      peakMemoryBytes: after.peakMemoryBytes,
    };
    opts.onEvent?.({ type: "end", execution });
    return execution;
  }

  /** Start the kernel now (a warm pool does, so that the first call need not wait). */
  async warm(): Promise<void> {
    await this.ensureKernel();
    if (this.kernel.warmupCode !== null) {
      await this.run(this.kernel.warmupCode, {
        timeoutMs: 10_000,
        outputCapBytes: 4096,
        silent: true,
      });
    }
  }

  /**
   * Make variables part of the environment of a kernel that already runs (a pooled
   * session handed out with its caller's envs); a kernel started later gets them anyway.
   */
  async setEnv(envs: Record<string, string>): Promise<void> {
    if (!this.channel) return;
    const code = this.kernel.setEnvCode(envs);
    if (code === null) return;
    const r = await this.run(code, { timeoutMs: 10_000, outputCapBytes: 4096 });
    if (r.error || (r.exitCode !== null && r.exitCode !== 0)) {
      throw new CorralError("runtime_failed", `cannot set the environment of context ${this.id}`);
    }
  }

  /** Kill the kernel (state lost); the next call starts a new one. */
  async restart(): Promise<void> {
    const ch = this.channel ?? (this.starting ? await this.starting.catch(() => null) : null);
    if (!ch) return;
    this.forget(ch);
    ch.stop();
    await Promise.race([ch.exited.catch(() => null), new Promise((r) => setTimeout(r, 5000))]);
  }

  async remove(): Promise<void> {
    this.removed = true;
    await this.restart();
  }
}
