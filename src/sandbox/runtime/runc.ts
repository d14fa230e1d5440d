/**
 * The runc driver: the only code that runs the OCI runtime. Each data directory has its
 * own runc state root (`<data>/runc`), so `gc` sees and removes only its own containers.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { constants as osConstants } from "node:os";
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

  async start(a: {
    id: string;
    bundle: string;
    socketPath: string;
    logPath: string;
  }): Promise<void> {
    const argv = [
      "host-listen",
      a.socketPath,
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
    this.shims.set(a.id, gone);
    this.shimProcesses.set(a.id, shim);
    void gone.then(() => {
      this.shims.delete(a.id);
      this.shimProcesses.delete(a.id);
    });
    let stderr = "";
    shim.stderr.setEncoding("utf8");
    shim.stderr.on("data", (c: string) => {
      if (stderr.length < 64 * 1024) stderr += c;
    });
    const code = await new Promise<number | Error>((resolve) => {
      let out = "";
      const timer = setTimeout(() => {
        shim.kill("SIGKILL");
        resolve(new Error("runc did not start the sandbox within 60 s"));
      }, 60_000);
      shim.stdout.setEncoding("utf8");
      shim.stdout.on("data", (c: string) => {
        out += c;
        const m = /^runc (\d+)\n/.exec(out);
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
    // The shim lives on by itself; it must not keep the process alive.
    shim.unref();
    shim.stdout.destroy();
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
    if (shim && gone && shim.exitCode === null && shim.signalCode === null) {
      shim.kill("SIGTERM");
      const stopped = await within(gone, 5000);
      if (stopped) return;
    }
    // A container started by another process (gc), or a shim that did not answer.
    await this.kill(id);
  }

  async remove(id: string): Promise<void> {
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
