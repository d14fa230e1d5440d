/**
 * Commands of a session (E2B's model): a program run in the sandbox, in the foreground
 * (`commands.run` resolves with its result) or in the background (`background: true`
 * resolves with a handle at once). A tracked command keeps what it printed, within the
 * output cap, so that `connect(pid)` can re-attach to it later: the output so far first,
 * then what comes next.
 */
import { CorralError } from "../core/errors.js";
import { type StreamResult, streamResult } from "./run-code.js";
import type { ExecOutcome, RunningProcess } from "./sandbox.js";
import { type DecodedChunk, Utf8Stream } from "./utf8-stream.js";

export interface CommandOptions {
  cwd?: string;
  envs?: Record<string, string>;
  /** Killed after this long (default 60 s); 0: no timeout (the session's deadline holds). */
  timeoutMs?: number;
  /** The same as `timeoutMs`; ms. */
  timeout?: number;
  /**
   * Bytes for stdin (then end of file), or `true` to keep stdin open for `sendStdin`
   * (background commands); otherwise stdin is /dev/null.
   */
  stdin?: string | Buffer | boolean;
  /** Return a handle at once instead of waiting for the command to exit. */
  background?: boolean;
  onStdout?: (chunk: DecodedChunk) => void;
  onStderr?: (chunk: DecodedChunk) => void;
}

export interface CommandResult {
  /** Names this command in events and in the session's file-change windows. */
  id: string;
  pid: number | null;
  stdout: StreamResult;
  stderr: StreamResult;
  exitCode: number;
  killed: "timeout" | "oom" | null;
  /** The sandbox was lost while the command ran. */
  sandboxKilled: boolean;
  durationMs: number;
  /** CPU time of the command and the children it waited for (from the kernel's rusage). */
  cpuMs: number | null;
  /** Peak resident memory of the command or of its largest waited-for child. */
  peakMemoryBytes: number | null;
}

export interface CommandInfo {
  pid: number;
  cmd: string | string[];
  cwd: string;
  startedAt: Date;
}

/** How long kill(SIGKILL) waits for the command's exit before it returns anyway. */
const KILL_WAIT_MS = 2000;

export interface CommandHandle {
  /** The execution id of the command (as on its result). */
  id: string;
  pid: number;
  /** Resolves with the result once the command has exited (a non-zero status included). */
  wait(): Promise<CommandResult>;
  /** Signal the command's process group (default SIGKILL); false if it already exited. */
  kill(signal?: number): Promise<boolean>;
  sendStdin(data: string | Buffer): void;
  closeStdin(): void;
  /** Stop this handle's callbacks; the command runs on. */
  disconnect(): void;
  /** Output so far, decoded. */
  readonly stdout: string;
  readonly stderr: string;
}

type Listener = Pick<CommandOptions, "onStdout" | "onStderr">;

export class TrackedCommand {
  pid: number | null = null;
  readonly startedAt = new Date();
  private readonly decoders = { stdout: new Utf8Stream(), stderr: new Utf8Stream() };
  private readonly emitted: Record<"stdout" | "stderr", DecodedChunk[]> = {
    stdout: [],
    stderr: [],
  };
  private readonly listeners = new Set<Listener>();
  private proc: RunningProcess | null = null;
  done!: Promise<CommandResult>;

  constructor(
    readonly id: string,
    readonly cmd: string | string[],
    readonly cwd: string,
    listener: Listener,
  ) {
    this.listeners.add(listener);
  }

  attach(proc: RunningProcess): void {
    this.proc = proc;
    this.pidPromise = proc.pid;
  }

  private pidPromise: Promise<number> = Promise.resolve(-1);

  /** Resolves with the pid once the program runs; rejects if it could not start. */
  started(): Promise<number> {
    return this.pidPromise;
  }

  get running(): boolean {
    return this.proc !== null;
  }

  /** A chunk within the cap, from the supervisor: decode once, keep, hand to listeners. */
  output(stream: "stdout" | "stderr", chunk: Buffer): void {
    this.emit(stream, this.decoders[stream].push(chunk));
  }

  private emit(stream: "stdout" | "stderr", d: DecodedChunk): void {
    if (d.text.length === 0 && d.base64 === undefined) return;
    this.emitted[stream].push(d);
    for (const l of this.listeners) (stream === "stdout" ? l.onStdout : l.onStderr)?.(d);
  }

  finish(outcome: ExecOutcome): CommandResult {
    for (const stream of ["stdout", "stderr"] as const)
      this.emit(stream, this.decoders[stream].end());
    this.proc = null;
    this.listeners.clear();
    const exit = outcome.exit;
    return {
      id: this.id,
      pid: this.pid,
      stdout: streamResult(outcome.stdout.bytes(), outcome.stdout.total),
      stderr: streamResult(outcome.stderr.bytes(), outcome.stderr.total),
      exitCode: outcome.exitCode,
      killed: outcome.killed,
      sandboxKilled: outcome.sandboxKilled,
      durationMs: Math.round(outcome.durationMs * 10) / 10,
      cpuMs: exit ? Math.round((exit.userUs + exit.sysUs) / 100) / 10 : null,
      peakMemoryBytes: exit ? exit.maxRssKiB * 1024 : null,
    };
  }

  text(stream: "stdout" | "stderr"): string {
    return this.emitted[stream].map((d) => d.text).join("");
  }

  /**
   * A handle on this command. With `replay`, the listener first gets what was printed so
   * far (connect), then the rest as it comes.
   */
  handle(listener: Listener, replay = false): CommandHandle {
    const pid = this.pid ?? -1;
    if (replay) {
      for (const d of this.emitted.stdout) listener.onStdout?.(d);
      for (const d of this.emitted.stderr) listener.onStderr?.(d);
      if (this.running) this.listeners.add(listener);
    }
    const self = this;
    return {
      id: this.id,
      pid,
      wait: () => this.done,
      kill: async (signal = 9) => {
        if (!this.proc) return false;
        this.proc.signal(signal);
        // SIGKILL cannot be caught: wait (briefly) for the exit, so that list() right after
        // no longer shows the command and a second kill says false.
        if (signal === 9) {
          await Promise.race([
            this.done.catch(() => undefined),
            new Promise((r) => setTimeout(r, KILL_WAIT_MS).unref()),
          ]);
        }
        return true;
      },
      sendStdin: (data) => this.live("send stdin to").writeStdin(data),
      closeStdin: () => this.live("close the stdin of").closeStdin(),
      disconnect: () => {
        this.listeners.delete(listener);
      },
      get stdout() {
        return self.text("stdout");
      },
      get stderr() {
        return self.text("stderr");
      },
    };
  }

  private live(what: string): RunningProcess {
    if (!this.proc)
      throw new CorralError("not_found", `cannot ${what} command ${this.pid}: it has exited`);
    return this.proc;
  }
}
