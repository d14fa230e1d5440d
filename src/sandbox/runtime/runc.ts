/**
 * The runc driver: the only code that runs the OCI runtime. Each data directory has its
 * own runc state root (`<data>/runc`), so `gc` sees and removes only its own containers.
 */
import { readFile } from "node:fs/promises";
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
  remove(id: string): Promise<void>;
  list(): Promise<RuntimeContainer[]>;
}

export class RuncRuntime implements Runtime {
  readonly name = "runc";
  constructor(
    readonly binary: string,
    readonly stateRoot: string,
    /** The supervisor binary: its host-listen mode binds the socket and execs runc. */
    readonly supervisorBinary: string,
  ) {}

  private base(): string[] {
    return [this.binary, "--root", this.stateRoot];
  }

  async start(a: { id: string; bundle: string; socketPath: string; logPath: string }): Promise<void> {
    const argv = [
      this.supervisorBinary,
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
    let r: Awaited<ReturnType<typeof runCommand>>;
    try {
      r = await runCommand(argv, { timeoutMs: 60_000 });
    } catch (err) {
      throw new CorralError(
        "prerequisite_missing",
        `cannot start ${this.binary}: ${(err as Error).message}`,
        "install runc (apt-get install runc)",
      );
    }
    if (r.code !== 0) {
      const detail = (await lastRuncError(a.logPath)) ?? (r.stderr.trim() || `exit ${r.code}`);
      throw new CorralError("runtime_failed", `runc could not start the sandbox: ${detail}`);
    }
  }

  async kill(id: string): Promise<void> {
    // --all signals every process of the container, not only its init.
    await runCommand([...this.base(), "kill", "--all", id, "KILL"]);
  }

  async remove(id: string): Promise<void> {
    const r = await runCommand([...this.base(), "delete", "--force", id]);
    if (r.code !== 0 && !/does not exist|not exist/i.test(r.stderr)) {
      throw new CorralError("runtime_failed", `runc delete ${id} failed: ${r.stderr.trim()}`);
    }
  }

  async list(): Promise<RuntimeContainer[]> {
    const r = await runCommand([...this.base(), "list", "--format", "json"]);
    if (r.code !== 0) return [];
    const parsed = JSON.parse(r.stdout || "null") as RuntimeContainer[] | null;
    return (parsed ?? []).map((c) => ({ id: c.id, status: c.status, pid: c.pid }));
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
