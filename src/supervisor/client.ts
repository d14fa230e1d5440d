/**
 * The host side of the supervisor channel: one unix-socket connection to one sandbox's
 * supervisor, multiplexing control requests (channel 0) and processes (one channel each).
 */
import net from "node:net";
import { constants as osConstants } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { CorralError, type ErrorCode } from "../core/errors.js";
import {
  type CallDone,
  decodeCallDone,
  decodeError,
  decodeExit,
  decodeFileDone,
  decodeFileRecords,
  decodeProbe,
  Ev,
  type ExitInfo,
  encodeContextExec,
  encodeContextStart,
  encodeFileCommit,
  encodeFileList,
  encodeFileMkdir,
  encodeFileRead,
  encodeFileRemove,
  encodeFileRename,
  encodeFileStat,
  encodeFileWrite,
  encodeFrame,
  encodeSpawn,
  encodeWriteFile,
  type FileRecord,
  type FileWritePayload,
  type Frame,
  FrameDecoder,
  PROTOCOL_VERSION,
  Req,
  u32,
} from "./protocol.js";

export type { CallDone, ExitInfo, FileRecord, FileWritePayload } from "./protocol.js";

export interface ContextStartOptions {
  argv: readonly string[];
  env: Readonly<Record<string, string>>;
  cwd: string;
  /** Sent to the kernel at a call's deadline (SIGINT for Python); 0 for none. */
  interruptSignal: number;
  /** Kernel events that arrive while no call is running (a kernel's "ready"). */
  onIdleMessage?: (payload: Buffer) => void;
}

export interface CallHandlers {
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  onMessage?: (payload: Buffer) => void;
}

/**
 * One context (a long-lived kernel under its own keeper) on the supervisor. Calls run
 * one at a time; the supervisor refuses a second with EBUSY, and the host side never
 * sends one.
 */
export interface ContextChannel {
  channel: number;
  /** The kernel's pid in the sandbox, once it was exec'd. */
  started: Promise<number>;
  /** Once the kernel and everything it started are gone. */
  exited: Promise<ExitInfo>;
  /** Send one request; resolves when the kernel said END or the call was ended for it. */
  call(request: Buffer, timeoutMs: number, handlers: CallHandlers): Promise<CallDone>;
  signal(signo: number): void;
  stop(): void;
}

/** An ERROR event from the supervisor about one request: the errno it carried is kept. */
export class SupervisorRequestError extends CorralError {
  readonly errno: number;
  constructor(errno: number, message: string, code: ErrorCode = "runtime_failed") {
    super(code, message);
    this.errno = errno;
  }
}

/**
 * The error of a SPAWN that failed before the program ran. The supervisor reports a failed
 * exec as "exec PROGRAM: <strerror>" with its errno: ENOENT (not in the image, or not in its
 * PATH) and EACCES or ENOEXEC (there, but not executable) are the program's fault, and say
 * so; anything else (fork, chdir) stays a runtime failure.
 */
export function spawnFailure(
  errno: number,
  message: string,
  program: string,
): SupervisorRequestError {
  if (message.startsWith("exec ")) {
    const where = program.includes("/") ? "" : " (looked up in its PATH)";
    if (errno === osConstants.errno.ENOENT) {
      return new SupervisorRequestError(
        errno,
        `program ${program} not found in the image${where}`,
        "program_not_found",
      );
    }
    if (errno === osConstants.errno.EACCES || errno === osConstants.errno.ENOEXEC) {
      const why = errno === osConstants.errno.EACCES ? "permission denied" : "exec format error";
      return new SupervisorRequestError(
        errno,
        `program ${program} is not executable in the image (${why})`,
        "program_not_executable",
      );
    }
  }
  return new SupervisorRequestError(errno, message);
}

export interface SpawnOptions {
  argv: readonly string[];
  env: Readonly<Record<string, string>>;
  cwd: string;
  /** Killed by the supervisor (SIGKILL to its process group) after this long; 0 = never. */
  timeoutMs: number;
  /** Give the process a stdin pipe (otherwise /dev/null). */
  stdin?: boolean;
  /** At most this much of each stream is sent (the exit says how much there was). */
  outputCapBytes?: number;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
}

export interface SpawnHandle {
  channel: number;
  /** The pid inside the sandbox, once exec succeeded; rejects if it could not start. */
  started: Promise<number>;
  /** Resolves once the process is reaped and its buffered output forwarded. */
  exited: Promise<ExitInfo>;
  writeStdin(data: Buffer | string): void;
  closeStdin(): void;
  signal(signo: number): void;
}

/** A FILE_READ in progress: data arrives through the sink, never more than the credit. */
export interface FileReadHandle {
  /** The opened file (FILE_INFO); rejects if it could not be opened or is refused. */
  info: Promise<FileRecord>;
  /** The byte count, once the whole file was sent; rejects on an error or cancel. */
  done: Promise<number>;
  /** The host can take `bytes` more (it consumed that much). */
  credit(bytes: number): void;
  /** Stop the read; nothing more arrives. */
  cancel(): void;
}

/** A FILE_WRITE in progress: chunks go straight out; commit renames the file into place. */
export interface FileWriteHandle {
  /** Send bytes (at most 1 MiB per frame is sent). */
  write(chunk: Buffer): void;
  /** The supervisor's error, once it reported one (later writes are dropped by it). */
  readonly error: Error | null;
  /** Resolves when the socket can take more (flow control for large uploads). */
  drain(): Promise<void>;
  /** Ask for the rename into place; resolves with the byte count written. */
  commit(total: number): Promise<number>;
  /** Drop the write: the temporary file is removed, the target is untouched. */
  cancel(): void;
}

/** The largest FILE_CHUNK the host sends. */
export const FILE_CHUNK_BYTES = 1 << 20;

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (v: T) => void;
  reject: (e: Error) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Callers may await only one of several promises; a rejection nobody awaits must not
  // crash the process.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

interface ChannelState {
  onFrame(frame: Frame): void;
  fail(err: Error): void;
}

export class SupervisorClient {
  private readonly decoder = new FrameDecoder();
  /** Replies on channel 0 arrive in request order. */
  private readonly control: Array<{ expect: number; d: Deferred<Frame> }> = [];
  private readonly channels = new Map<number, ChannelState>();
  private nextChannel = 1;
  private closedError: Error | null = null;

  /** Bytes received from the supervisor so far (frames and all). */
  get bytesRead(): number {
    return this.socket.bytesRead;
  }

  private constructor(private readonly socket: net.Socket) {
    socket.on("data", (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (err) {
        this.failAll(
          new CorralError(
            "supervisor_failed",
            `supervisor protocol error: ${(err as Error).message}`,
          ),
        );
        socket.destroy();
        return;
      }
      for (const f of frames) {
        try {
          this.dispatch(f);
        } catch (err) {
          // A frame that does not decode (a short payload, a bad length) means the other
          // end cannot be trusted any more: end the connection, never the host process.
          this.failAll(
            new CorralError(
              "supervisor_failed",
              `supervisor protocol error: frame 0x${f.type.toString(16)} on channel ${f.channel}: ${(err as Error).message}`,
            ),
          );
          socket.destroy();
          return;
        }
      }
    });
    socket.on("error", (err) =>
      this.failAll(
        new CorralError("supervisor_failed", `supervisor connection failed: ${err.message}`),
      ),
    );
    socket.on("close", () =>
      this.failAll(new CorralError("supervisor_failed", "the sandbox's supervisor is gone")),
    );
  }

  /** Connect, retrying while the socket is not there yet or not yet accepting. */
  static async connect(
    socketPath: string,
    opts: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<SupervisorClient> {
    const deadline = Date.now() + opts.timeoutMs;
    for (;;) {
      if (opts.signal?.aborted) {
        throw new CorralError(
          "supervisor_failed",
          "the sandbox did not start: connection given up",
        );
      }
      try {
        const socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(socketPath);
          s.once("connect", () => {
            s.removeListener("error", reject);
            resolve(s);
          });
          s.once("error", reject);
        });
        return new SupervisorClient(socket);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if ((code !== "ENOENT" && code !== "ECONNREFUSED") || Date.now() > deadline) {
          throw new CorralError(
            "supervisor_failed",
            `cannot reach the sandbox's supervisor at ${socketPath}: ${(err as Error).message}`,
          );
        }
        await sleep(5);
      }
    }
  }

  private dispatch(f: Frame): void {
    if (f.channel === 0) {
      const waiter = this.control.shift();
      if (!waiter) return; // unsolicited: ignore
      if (f.type === Ev.ERROR) {
        const e = decodeError(f.payload);
        waiter.d.reject(new SupervisorRequestError(e.errno, `supervisor: ${e.message}`));
      } else if (f.type !== waiter.expect) {
        waiter.d.reject(
          new CorralError(
            "supervisor_failed",
            `supervisor answered 0x${f.type.toString(16)}, expected 0x${waiter.expect.toString(16)}`,
          ),
        );
      } else {
        waiter.d.resolve(f);
      }
      return;
    }
    this.channels.get(f.channel)?.onFrame(f);
  }

  private failAll(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const w of this.control.splice(0)) w.d.reject(err);
    for (const ch of this.channels.values()) ch.fail(err);
    this.channels.clear();
  }

  private send(type: number, channel: number, payload?: Buffer): void {
    if (this.closedError) throw this.closedError;
    this.socket.write(encodeFrame(type, channel, payload));
  }

  private request(type: number, expect: number, payload?: Buffer): Promise<Frame> {
    const d = deferred<Frame>();
    if (this.closedError) {
      d.reject(this.closedError);
      return d.promise;
    }
    this.control.push({ expect, d });
    this.send(type, 0, payload);
    return d.promise;
  }

  private allocChannel(): number {
    const ch = this.nextChannel;
    this.nextChannel = this.nextChannel >= 0xfffffff0 ? 1 : this.nextChannel + 1;
    return ch;
  }

  /** Version handshake: returns the supervisor's version string. */
  async hello(): Promise<string> {
    const f = await this.request(Req.HELLO, Ev.HELLO_OK, u32(PROTOCOL_VERSION));
    return f.payload.subarray(4).toString("utf8");
  }

  /** The self-check probe, as key=value pairs seen from inside the sandbox. */
  async probe(): Promise<Record<string, string>> {
    return decodeProbe((await this.request(Req.PROBE, Ev.PROBE_REPORT)).payload);
  }

  /** SIGKILL every process of the sandbox but the supervisor. */
  async killAll(): Promise<void> {
    await this.request(Req.KILL_ALL, Ev.OK);
  }

  /** Kill everything and end the supervisor (and so the container). */
  shutdown(): void {
    if (!this.closedError) this.socket.write(encodeFrame(Req.SHUTDOWN, 0));
  }

  /** Write a file inside the sandbox (parents created, symlinks never followed). */
  writeFile(file: string, data: Buffer, mode = 0o644): Promise<void> {
    const channel = this.allocChannel();
    const d = deferred<void>();
    const payload = encodeWriteFile(file, data, mode);
    this.channels.set(channel, {
      onFrame: (f) => {
        this.channels.delete(channel);
        if (f.type === Ev.OK) d.resolve();
        else if (f.type === Ev.ERROR) {
          const e = decodeError(f.payload);
          d.reject(
            new SupervisorRequestError(
              e.errno,
              `cannot write ${file} in the sandbox: ${e.message}`,
            ),
          );
        } else
          d.reject(
            new CorralError(
              "supervisor_failed",
              `unexpected answer 0x${f.type.toString(16)} to WRITE_FILE`,
            ),
          );
      },
      fail: (err) => d.reject(err),
    });
    try {
      this.send(Req.WRITE_FILE, channel, payload);
    } catch (err) {
      this.channels.delete(channel);
      d.reject(err as Error);
    }
    return d.promise;
  }

  /**
   * A FILE_* request on a fresh channel that ends with `final` (FILE_DONE or FILE_INFO)
   * or ERROR; other frames go to `onFrame`.
   */
  private fileRequest(
    type: number,
    payload: Buffer,
    final: number,
    onFrame?: (f: Frame) => void,
  ): Promise<Frame> {
    const channel = this.allocChannel();
    const d = deferred<Frame>();
    this.channels.set(channel, {
      onFrame: (f) => {
        if (f.type === final) {
          this.channels.delete(channel);
          d.resolve(f);
        } else if (f.type === Ev.ERROR) {
          this.channels.delete(channel);
          const e = decodeError(f.payload);
          d.reject(new SupervisorRequestError(e.errno, e.message));
        } else if (onFrame) {
          try {
            onFrame(f);
          } catch (err) {
            this.channels.delete(channel);
            d.reject(err as Error);
          }
        }
      },
      fail: (err) => d.reject(err),
    });
    try {
      this.send(type, channel, payload);
    } catch (err) {
      this.channels.delete(channel);
      d.reject(err as Error);
    }
    return d.promise;
  }

  /** What is at `file` (the last symlink followed only with `follow`). */
  async fileStat(file: string, follow: boolean): Promise<FileRecord> {
    const f = await this.fileRequest(Req.FILE_STAT, encodeFileStat(file, follow), Ev.FILE_INFO);
    const [record] = decodeFileRecords(f.payload);
    if (!record) throw new CorralError("supervisor_failed", "empty FILE_INFO from the supervisor");
    return record;
  }

  /** The entries below a directory, `depth` levels deep, in no particular order. */
  async fileList(file: string, depth: number): Promise<FileRecord[]> {
    const records: FileRecord[] = [];
    await this.fileRequest(Req.FILE_LIST, encodeFileList(file, depth), Ev.FILE_DONE, (f) => {
      if (f.type === Ev.FILE_ENTRIES) records.push(...decodeFileRecords(f.payload));
    });
    return records;
  }

  /** Make a directory; true if made, false if it was one already. */
  async fileMkdir(file: string, parents: boolean, mode: number): Promise<boolean> {
    const f = await this.fileRequest(
      Req.FILE_MKDIR,
      encodeFileMkdir(file, parents, mode),
      Ev.FILE_DONE,
    );
    return decodeFileDone(f.payload) === 1;
  }

  /** Remove a file, a symlink or a directory; resolves with how many entries went. */
  async fileRemove(file: string, recursive: boolean): Promise<number> {
    const f = await this.fileRequest(
      Req.FILE_REMOVE,
      encodeFileRemove(file, recursive),
      Ev.FILE_DONE,
    );
    return decodeFileDone(f.payload);
  }

  async fileRename(from: string, to: string, noReplace: boolean): Promise<void> {
    await this.fileRequest(Req.FILE_RENAME, encodeFileRename(from, to, noReplace), Ev.FILE_DONE);
  }

  /** Stream a regular file out of the sandbox under a credit window (see FileReadHandle). */
  fileRead(
    file: string,
    opts: { maxBytes: number; window: number; onData: (chunk: Buffer) => void },
  ): FileReadHandle {
    const channel = this.allocChannel();
    const info = deferred<FileRecord>();
    const done = deferred<number>();
    let finished = false;
    const finish = (err: Error | null, total = 0) => {
      if (finished) return;
      finished = true;
      this.channels.delete(channel);
      if (err) {
        info.reject(err);
        done.reject(err);
      } else done.resolve(total);
    };
    this.channels.set(channel, {
      onFrame: (f) => {
        switch (f.type) {
          case Ev.FILE_INFO: {
            const [record] = decodeFileRecords(f.payload);
            if (record) info.resolve(record);
            break;
          }
          case Ev.FILE_DATA:
            opts.onData(f.payload);
            break;
          case Ev.FILE_DONE:
            finish(null, decodeFileDone(f.payload));
            break;
          case Ev.ERROR: {
            const e = decodeError(f.payload);
            finish(new SupervisorRequestError(e.errno, e.message));
            break;
          }
          default:
            break;
        }
      },
      fail: (err) => finish(err),
    });
    try {
      this.send(Req.FILE_READ, channel, encodeFileRead(file, opts.maxBytes, opts.window));
    } catch (err) {
      finish(err as Error);
    }
    return {
      info: info.promise,
      done: done.promise,
      credit: (bytes) => {
        if (!finished && bytes > 0 && !this.closedError)
          this.send(Req.FILE_CREDIT, channel, u32(Math.min(bytes, 0xffffffff)));
      },
      cancel: () => {
        if (finished) return;
        if (!this.closedError) this.send(Req.FILE_CANCEL, channel);
        finish(new CorralError("internal", "the read was cancelled"));
      },
    };
  }

  /** Stream bytes into a new file of the sandbox (see FileWriteHandle). */
  fileWrite(file: string, opts: FileWritePayload): FileWriteHandle {
    const channel = this.allocChannel();
    const result = deferred<number>();
    let finished = false;
    let error: Error | null = null;
    const finish = (err: Error | null, total = 0) => {
      if (finished) return;
      finished = true;
      this.channels.delete(channel);
      if (err) {
        error = err;
        result.reject(err);
      } else result.resolve(total);
    };
    this.channels.set(channel, {
      onFrame: (f) => {
        if (f.type === Ev.FILE_DONE) finish(null, decodeFileDone(f.payload));
        else if (f.type === Ev.ERROR) {
          const e = decodeError(f.payload);
          finish(new SupervisorRequestError(e.errno, e.message));
        }
      },
      fail: (err) => finish(err),
    });
    try {
      this.send(Req.FILE_WRITE, channel, encodeFileWrite(file, opts));
    } catch (err) {
      finish(err as Error);
    }
    return {
      get error() {
        return error;
      },
      write: (chunk) => {
        if (finished) return;
        for (let off = 0; off < chunk.length; off += FILE_CHUNK_BYTES) {
          this.send(Req.FILE_CHUNK, channel, chunk.subarray(off, off + FILE_CHUNK_BYTES));
        }
      },
      drain: () => this.drain(),
      commit: (total) => {
        if (!finished) this.send(Req.FILE_COMMIT, channel, encodeFileCommit(total));
        return result.promise;
      },
      cancel: () => {
        if (finished) return;
        if (!this.closedError) this.send(Req.FILE_CANCEL, channel);
        finish(new CorralError("internal", "the write was cancelled"));
      },
    };
  }

  /** Resolves once the socket's write buffer has room again. */
  private drain(): Promise<void> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = () => {
        this.socket.off("drain", done);
        this.socket.off("close", done);
        if (this.closedError) reject(this.closedError);
        else resolve();
      };
      this.socket.on("drain", done);
      this.socket.on("close", done);
    });
  }

  spawn(opts: SpawnOptions): SpawnHandle {
    const channel = this.allocChannel();
    const started = deferred<number>();
    const exited = deferred<ExitInfo>();
    let isStarted = false;
    this.channels.set(channel, {
      onFrame: (f) => {
        switch (f.type) {
          case Ev.STARTED:
            isStarted = true;
            started.resolve(f.payload.readUInt32BE(0));
            break;
          case Ev.STDOUT:
            opts.onStdout?.(f.payload);
            break;
          case Ev.STDERR:
            opts.onStderr?.(f.payload);
            break;
          case Ev.EXIT:
            this.channels.delete(channel);
            exited.resolve(decodeExit(f.payload));
            break;
          case Ev.ERROR: {
            const e = decodeError(f.payload);
            const err = isStarted
              ? new SupervisorRequestError(e.errno, e.message)
              : spawnFailure(e.errno, e.message, opts.argv[0] ?? "");
            if (!isStarted) {
              this.channels.delete(channel);
              started.reject(err);
              exited.reject(err);
            }
            break;
          }
          default:
            break;
        }
      },
      fail: (err) => {
        started.reject(err);
        exited.reject(err);
      },
    });
    try {
      this.send(
        Req.SPAWN,
        channel,
        encodeSpawn({
          argv: opts.argv,
          env: opts.env,
          cwd: opts.cwd,
          timeoutMs: opts.timeoutMs,
          stdinPipe: opts.stdin === true,
          ...(opts.outputCapBytes !== undefined ? { outputCapBytes: opts.outputCapBytes } : {}),
        }),
      );
    } catch (err) {
      this.channels.delete(channel);
      started.reject(err as Error);
      exited.reject(err as Error);
    }
    return {
      channel,
      started: started.promise,
      exited: exited.promise,
      writeStdin: (data) => {
        const buf = typeof data === "string" ? Buffer.from(data) : data;
        for (let off = 0; off < buf.length; off += 1 << 20) {
          this.send(Req.STDIN, channel, buf.subarray(off, off + (1 << 20)));
        }
      },
      closeStdin: () => this.send(Req.STDIN_CLOSE, channel),
      signal: (signo) => this.send(Req.SIGNAL, channel, u32(signo)),
    };
  }

  startContext(opts: ContextStartOptions): ContextChannel {
    const channel = this.allocChannel();
    const started = deferred<number>();
    const exited = deferred<ExitInfo>();
    let isStarted = false;
    let active: { handlers: CallHandlers; d: Deferred<CallDone> } | null = null;
    this.channels.set(channel, {
      onFrame: (f) => {
        switch (f.type) {
          case Ev.STARTED:
            isStarted = true;
            started.resolve(f.payload.readUInt32BE(0));
            break;
          case Ev.STDOUT:
            active?.handlers.onStdout?.(f.payload);
            break;
          case Ev.STDERR:
            active?.handlers.onStderr?.(f.payload);
            break;
          case Ev.CTX_MSG:
            if (active) active.handlers.onMessage?.(f.payload);
            else opts.onIdleMessage?.(f.payload);
            break;
          case Ev.CTX_DONE: {
            const call = active;
            active = null;
            call?.d.resolve(decodeCallDone(f.payload));
            break;
          }
          case Ev.CTX_EXIT:
            this.channels.delete(channel);
            exited.resolve(decodeExit(f.payload));
            break;
          case Ev.ERROR: {
            const e = decodeError(f.payload);
            const err = isStarted
              ? new SupervisorRequestError(e.errno, e.message)
              : spawnFailure(e.errno, e.message, opts.argv[0] ?? "");
            if (!isStarted) {
              this.channels.delete(channel);
              started.reject(err);
              exited.reject(err);
            } else if (active) {
              const call = active;
              active = null;
              call.d.reject(err);
            }
            break;
          }
          default:
            break;
        }
      },
      fail: (err) => {
        started.reject(err);
        exited.reject(err);
        active?.d.reject(err);
        active = null;
      },
    });
    try {
      this.send(
        Req.CTX_START,
        channel,
        encodeContextStart({
          argv: opts.argv,
          env: opts.env,
          cwd: opts.cwd,
          interruptSignal: opts.interruptSignal,
        }),
      );
    } catch (err) {
      this.channels.delete(channel);
      started.reject(err as Error);
      exited.reject(err as Error);
    }
    return {
      channel,
      started: started.promise,
      exited: exited.promise,
      call: (request, timeoutMs, handlers) => {
        if (active) {
          return Promise.reject(new CorralError("busy", "the context is already running a call"));
        }
        const d = deferred<CallDone>();
        active = { handlers, d };
        try {
          this.send(Req.CTX_EXEC, channel, encodeContextExec(timeoutMs, request));
        } catch (err) {
          active = null;
          d.reject(err as Error);
        }
        return d.promise;
      },
      signal: (signo) => this.send(Req.SIGNAL, channel, u32(signo)),
      stop: () => {
        if (!this.closedError) this.send(Req.CTX_STOP, channel);
      },
    };
  }

  close(): void {
    this.socket.destroy();
  }
}
