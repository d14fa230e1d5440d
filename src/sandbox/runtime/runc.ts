/**
 * The runc driver: the only code that runs the OCI runtime. Each data directory has its
 * own runc state root (`<data>/runc`), so `gc` sees and removes only its own containers.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { constants as osConstants } from "node:os";
import type { Readable } from "node:stream";
import { CorralError } from "../../core/errors.js";
import { runCommand } from "../../core/proc.js";

export interface RuntimeContainer {
  id: string;
  status: string;
  pid: number;
}

export interface Runtime {
  readonly name: string;
  /** Start the container detached; its init gets the listening socket at fd 3. */
  start(args: { id: string; bundle: string; socketPath: string; logPath: string }): Promise<void>;
  kill(id: string): Promise<void>;
  /**
   * Stop the container: kill every process in it and wait until they are reaped. The
   * container still has to be removed.
   */
  stop(id: string): Promise<void>;
  remove(id: string): Promise<void>;
  list(): Promise<RuntimeContainer[]>;
}

export class RuncRuntime implements Runtime {
  readonly name = "runc";
  constructor(
    readonly binary: string,
    readonly stateRoot: string,
    /** The supervisor binary: its host-listen mode binds the socket and runs runc as the sandbox's shim. */
    readonly supervisorBinary: string,
  ) {}

  private base(): string[] {
    return [this.binary, "--root", this.stateRoot];
  }

  /** Each started container's shim (see host-listen in the supervisor), until it exits. */
  private readonly shims = new Map<string, Promise<void>>();
  private readonly shimProcesses = new Map<string, ChildProcess>();
  private readonly shimOutputs = new Map<string, ShimOutput>();
  /** Containers that their shim is deleting (after our stop): its runc delete's status. */
  private readonly deleting = new Map<string, Promise<number | null>>();

  async start(a: {
    id: string;
    bundle: string;
    socketPath: string;
    logPath: string;
  }): Promise<void> {
    // Once we have stopped it, the shim deletes the container itself, the moment it is dead.
    const deleteArgv = [...this.base(), "delete", "--force", a.id];
    const argv = [
      "host-listen",
      a.socketPath,
      "--after-stop",
      String(deleteArgv.length),
      ...deleteArgv,
      "--",
      ...this.base(),
      "--log",
      a.logPath,
      "--log-format",
      "json",
      "run",
      "--detach",
      "--preserve-fds",
      "1",
      "--bundle",
      a.bundle,
      a.id,
    ];
    // The shim runs in its own session (a Ctrl-C to the CLI is not for it) but stays our
    // child: it reaps the container's init, and we reap the shim.
    const shim = spawn(this.supervisorBinary, argv, {
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    const gone = new Promise<void>((resolve) => {
      shim.once("exit", () => resolve());
      shim.once("error", () => resolve());
    });
    const output = new ShimOutput(shim.stdout);
    this.shims.set(a.id, gone);
    this.shimProcesses.set(a.id, shim);
    this.shimOutputs.set(a.id, output);
    void gone.then(() => {
      this.shims.delete(a.id);
      this.shimProcesses.delete(a.id);
      this.shimOutputs.delete(a.id);
    });
    let stderr = "";
    shim.stderr.setEncoding("utf8");
    shim.stderr.on("data", (c: string) => {
      if (stderr.length < 64 * 1024) stderr += c;
    });
    const code = await new Promise<number | Error>((resolve) => {
      const timer = setTimeout(() => {
        shim.kill("SIGKILL");
        resolve(new Error("runc did not start the sandbox within 60 s"));
      }, 60_000);
      void output.line(/^runc (\d+)$/m).then((m) => {
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      });
      shim.once("error", (err) => {
        clearTimeout(timer);
        resolve(err);
      });
      shim.once("exit", (c, sig) => {
        clearTimeout(timer);
        resolve(c ?? 128 + (sig ? (osConstants.signals[sig] ?? 0) : 0));
      });
    });
    // The shim lives on by itself; it must not keep the process alive, nor must the pipe
    // of its reports.
    shim.unref();
    (shim.stdout as Readable & { unref(): void }).unref();
    shim.stderr.destroy();
    if (code instanceof Error) {
      throw new CorralError(
        "prerequisite_missing",
        `cannot start ${this.binary}: ${code.message}`,
        "install runc (apt-get install runc)",
      );
    }
    if (code === 127) {
      throw new CorralError(
        "prerequisite_missing",
        `cannot start ${this.binary}: ${stderr.trim() || "not found"}`,
        "install runc (apt-get install runc)",
      );
    }
    if (code !== 0) {
      const detail = (await lastRuncError(a.logPath)) ?? (stderr.trim() || `exit ${code}`);
      throw new CorralError("runtime_failed", `runc could not start the sandbox: ${detail}`);
    }
  }

  async kill(id: string): Promise<void> {
    // --all signals every process of the container, not only its init.
    await runCommand([...this.base(), "kill", "--all", id, "KILL"]);
  }

  async stop(id: string): Promise<void> {
    // Our own shim stops it with no runc process and no polling: on SIGTERM it SIGKILLs
    // the container's init, its child (see shim_on_term), reaps everything and exits.
    // Node keeps the shim unreaped until its exit event, so its pid is safe to signal.
    const shim = this.shimProcesses.get(id);
    const gone = this.shims.get(id);
    const output = this.shimOutputs.get(id);
    if (shim && gone && output && shim.exitCode === null && shim.signalCode === null) {
      shim.kill("SIGTERM");
      // "stopped": every process is reaped, and the shim goes on to delete the container.
      const stopped = await valueWithin(output.line(/^stopped$/m), 5000);
      if (stopped) {
        const deleted = output.line(/^deleted (\d+)$/m).then((m) => (m ? Number(m[1]) : null));
        this.deleting.set(id, deleted);
        return;
      }
      // Its stdout ended without it (its container died by itself meanwhile): its exit.
      if (stopped === null && (await within(gone, 5000))) return;
    }
    // A container started by another process (gc), or a shim that did not answer.
    await this.kill(id);
  }

  async remove(id: string): Promise<void> {
    const deleting = this.deleting.get(id);
    this.deleting.delete(id);
    // Done if the shim's runc delete succeeded; otherwise (it failed, or the shim went
    // without saying) our own delete below tells why, or finds nothing left.
    if (deleting && (await valueWithin(deleting, 10_000)) === 0) {
      const shim = this.shims.get(id);
      if (shim) await within(shim, 5000);
      return;
    }
    const r = await runCommand([...this.base(), "delete", "--force", id]);
    if (r.code !== 0 && !/does not exist|not exist/i.test(r.stderr)) {
      throw new CorralError("runtime_failed", `runc delete ${id} failed: ${r.stderr.trim()}`);
    }
    // Once the container is deleted its init dies; the shim reaps it and exits. Waiting
    // for that means no zombie of the sandbox's uid range outlives remove().
    const shim = this.shims.get(id);
    if (shim) await within(shim, 5000);
  }

  async list(): Promise<RuntimeContainer[]> {
    const r = await runCommand([...this.base(), "list", "--format", "json"]);
    if (r.code !== 0) return [];
    const parsed = JSON.parse(r.stdout || "null") as RuntimeContainer[] | null;
    return (parsed ?? []).map((c) => ({ id: c.id, status: c.status, pid: c.pid }));
  }
}

/**
 * Whether `p` settles within `ms`. The timer is cleared either way: a pending timer would
 * keep a finished CLI process alive for the rest of it.
 */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** What `p` resolves to, if it does within `ms`; undefined otherwise. */
async function valueWithin<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A shim's stdout: "runc N" once runc returned; after a stop, "stopped", then "deleted N".
 * A line is waited for until it arrives or the stream ends (then null).
 */
class ShimOutput {
  private text = "";
  private ended = false;
  private waiters: (() => void)[] = [];

  constructor(stream: Readable) {
    stream.setEncoding("utf8");
    stream.on("data", (c: string) => {
      if (this.text.length < 4096) this.text += c;
      this.wake();
    });
    stream.once("close", () => {
      this.ended = true;
      this.wake();
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  async line(re: RegExp): Promise<RegExpExecArray | null> {
    for (;;) {
      const m = re.exec(this.text);
      if (m || this.ended) return m;
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }
}

/** The last error runc wrote to its JSON log, if any. */
async function lastRuncError(logPath: string): Promise<string | null> {
  let text: string;
  try {
    text = await readFile(logPath, "utf8");
  } catch {
    return null;
  }
  let last: string | null = null;
  for (const line of text.split("\n")) {
    try {
      const entry = JSON.parse(line) as { level?: string; msg?: string };
      if (entry.level === "error" && entry.msg) last = entry.msg;
    } catch {
      // not JSON: ignore
    }
  }
  return last;
}
