/**
 * The runc driver: the only code that runs the OCI runtime. Each data directory has its
 * own runc state root (`<data>/runc`), so `gc` sees and removes only its own containers.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, rmdirSync, rmSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { constants as osConstants } from "node:os";
import path from "node:path";
import type { Readable } from "node:stream";
import { CorralError } from "../../core/errors.js";
import { runCommand } from "../../core/proc.js";
import { CGROUP_ROOT } from "./cgroups.js";

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
   * Stop the container: kill every process in it. Resolves true once they are known
   * reaped (our shim saw its init go), false when it could only signal them (runc kill).
   * The container still has to be removed.
   */
  stop(id: string): Promise<boolean>;
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
    /** The name of a container's cgroup (its cgroupsPath, without the leading slash). */
    readonly cgroupNameOf: (id: string) => string,
    /** Where cgroup file systems are mounted (only cgroups below it are ever removed). */
    readonly cgroupRoot = CGROUP_ROOT,
  ) {}

  private base(): string[] {
    return [this.binary, "--root", this.stateRoot];
  }

  /** Each started container's shim (see host-listen in the supervisor), until it exits. */
  private readonly shims = new Map<string, Promise<void>>();
  private readonly shimProcesses = new Map<string, ChildProcess>();
  private readonly shimOutputs = new Map<string, ShimOutput>();
  /**
   * Containers whose shim exited by itself after runc had started them: it reaped their
   * init (and so everything in their PID namespace). remove() can then do runc's
   * bookkeeping itself (see planReapedRemoval) instead of starting `runc delete`.
   */
  private readonly reaped = new Set<string>();

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
    let runcCode: number | null = null;
    const gone = new Promise<void>((resolve) => {
      shim.once("exit", (code) => {
        // It exits by itself only after reaping every child it had: once runc had started
        // the container, that includes its init, so the PID namespace is empty.
        if (code !== null && runcCode === 0) this.reaped.add(a.id);
        resolve();
      });
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
          runcCode = Number(m[1]);
          resolve(runcCode);
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

  async stop(id: string): Promise<boolean> {
    // Our own shim stops it with no runc process and no polling: on SIGTERM it SIGKILLs
    // the container's init, its child (see shim_on_term), reaps everything and exits.
    // Node keeps the shim unreaped until its exit event, so its pid is safe to signal.
    const shim = this.shimProcesses.get(id);
    const gone = this.shims.get(id);
    if (shim && gone && shim.exitCode === null && shim.signalCode === null) {
      shim.kill("SIGTERM");
      if ((await within(gone, 5000)) && this.reaped.has(id)) return true;
    } else if (this.reaped.has(id)) {
      return true; // it died by itself and the shim reaped it
    }
    // A container started by another process (gc), or a shim that did not answer in
    // time (a process stuck in the kernel): signalled, not known gone.
    await this.kill(id);
    return false;
  }

  async remove(id: string): Promise<void> {
    const reaped = this.reaped.delete(id);
    // Once the container is deleted its init dies; the shim reaps it and exits. Waiting
    // for that means no zombie of the sandbox's uid range outlives remove().
    const shim = this.shims.get(id);
    if (reaped && this.removeReaped(id)) {
      if (shim) await within(shim, 5000);
      return;
    }
    const r = await runCommand([...this.base(), "delete", "--force", id]);
    if (r.code !== 0 && !/does not exist|not exist/i.test(r.stderr)) {
      throw new CorralError("runtime_failed", `runc delete ${id} failed: ${r.stderr.trim()}`);
    }
    if (shim) await within(shim, 5000);
  }

  /**
   * Delete a container none of whose processes is left (our shim reaped its init): what
   * `runc delete` does for a stopped container, without the 5 to 8 ms of starting runc.
   * False when the state is not runc's as planReapedRemoval knows it, or a cgroup will
   * not go; the caller then asks runc itself.
   */
  private removeReaped(id: string): boolean {
    // Synchronous: a 25 KB file and a dozen cgroupfs rmdirs take less time than the
    // thread-pool round trips of doing them asynchronously.
    const stateDir = path.join(this.stateRoot, id);
    let state: unknown;
    try {
      state = JSON.parse(readFileSync(path.join(stateDir, "state.json"), "utf8"));
    } catch {
      return false;
    }
    const plan = planReapedRemoval(state, id, this.cgroupRoot, this.cgroupNameOf(id));
    if (plan === null) return false;
    for (const dir of plan.cgroupDirs) {
      try {
        rmdirSync(dir);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") return false;
      }
    }
    rmSync(stateDir, { recursive: true, force: true });
    return true;
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

/**
 * A shim's stdout: "runc N" once runc returned. A line is waited for until it arrives or
 * the stream ends (then null).
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

/**
 * The cgroups to remove for a container that runc started and whose processes are all
 * gone, from runc's own record of it (`state.json`: the id, and `cgroup_paths`, one
 * directory per controller it joined). With its state directory, that is everything
 * `runc delete` removes for such a container (no poststop hooks: Corral sets none).
 *
 * null, and the caller runs `runc delete` instead, unless the record is plainly runc's
 * and this container's: the same id, and every cgroup directory strictly below
 * `cgroupRoot`, canonical, and named `cgroupName` (the name Corral gave it). A record
 * that names anything else is never acted on.
 */
export function planReapedRemoval(
  state: unknown,
  id: string,
  cgroupRoot: string,
  cgroupName: string,
): { cgroupDirs: string[] } | null {
  if (state === null || typeof state !== "object") return null;
  const s = state as { id?: unknown; cgroup_paths?: unknown };
  if (s.id !== id) return null;
  const paths = s.cgroup_paths;
  if (paths === null || typeof paths !== "object" || Array.isArray(paths)) return null;
  const dirs = Object.values(paths as Record<string, unknown>);
  if (dirs.length === 0) return null;
  for (const dir of dirs) {
    if (typeof dir !== "string" || !dir.startsWith(`${cgroupRoot}/`)) return null;
    if (path.posix.normalize(dir) !== dir || dir.endsWith("/")) return null;
    const rest = dir.slice(cgroupRoot.length + 1).split("/");
    // <root>/<name> (v2) or <root>/<controller>/<name> (v1): runc's own layout for an
    // absolute cgroupsPath of one component, which is what Corral gives it.
    if (rest.length > 2 || rest.some((c) => c === "" || c === "." || c === "..")) return null;
    if (rest[rest.length - 1] !== cgroupName) return null;
  }
  return { cgroupDirs: [...new Set(dirs as string[])].sort() };
}
