/**
 * The host side of one Corral instance: its data directory, event log, runtime and the
 * supervisor binary that sandboxes run. Opened once per process (CLI command or server).
 */
import { createHash } from "node:crypto";
import { chmod, copyFile, mkdir, readFile, rename, stat } from "node:fs/promises";
import path from "node:path";
import { EventLog } from "../audit/events.js";
import { type CorralConfig, dataTag } from "../core/config.js";
import { CorralError } from "../core/errors.js";
import { openDb } from "../store/db.js";
import { supervisorBinaryPath } from "../supervisor/paths.js";
import { cgroupVersion, swapAccounting } from "./runtime/cgroups.js";
import { RuncRuntime, type Runtime } from "./runtime/runc.js";

export interface Host {
  config: CorralConfig;
  /** Names this data directory in host-global namespaces (cgroups, locks). */
  tag: string;
  events: EventLog;
  runtime: Runtime;
  /** The supervisor binary, copied into the data directory so the mapped range can reach it. */
  supervisor: string;
  swapAccounting: boolean;
  sandboxesDir: string;
  close(): void;
}

/** Every directory from / down to `dir` must be traversable by the sandbox's unprivileged ids. */
export async function checkTraversable(dir: string): Promise<void> {
  let current = path.resolve(dir);
  for (;;) {
    const st = await stat(current);
    if ((st.mode & 0o001) === 0) {
      throw new CorralError(
        "prerequisite_missing",
        `${current} is not traversable by the sandbox user range (mode ${(st.mode & 0o777).toString(8)})`,
        `chmod o+x ${current}, or choose another --data-dir`,
      );
    }
    const parent = path.dirname(current);
    if (parent === current) return;
    current = parent;
  }
}

export async function ensureDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o711 });
}

async function installSupervisor(dataDir: string): Promise<string> {
  const source = supervisorBinaryPath();
  let bytes: Buffer;
  try {
    bytes = await readFile(source);
  } catch {
    throw new CorralError(
      "prerequisite_missing",
      `the supervisor binary is missing (${source})`,
      "run npm run build (it needs gcc and libc6-dev)",
    );
  }
  const digest = createHash("sha256").update(bytes).digest("hex").slice(0, 16);
  const binDir = path.join(dataDir, "bin");
  await ensureDir(binDir);
  const target = path.join(binDir, `corral-supervisor-${digest}`);
  try {
    await stat(target);
  } catch {
    const tmp = `${target}.${process.pid}.tmp`;
    await copyFile(source, tmp);
    await chmod(tmp, 0o755);
    await rename(tmp, target);
  }
  return target;
}

export async function openHost(config: CorralConfig): Promise<Host> {
  if (process.getuid?.() !== 0) {
    throw new CorralError(
      "prerequisite_missing",
      "must run as root: Corral mounts layers and drives runc",
      "run it with sudo",
    );
  }
  await ensureDir(config.dataDir);
  await chmod(config.dataDir, 0o711);
  await checkTraversable(config.dataDir);
  const sandboxesDir = path.join(config.dataDir, "sandboxes");
  await ensureDir(sandboxesDir);
  const runcRoot = path.join(config.dataDir, "runc");
  await mkdir(runcRoot, { recursive: true, mode: 0o700 });
  const supervisor = await installSupervisor(config.dataDir);
  const db = openDb(path.join(config.dataDir, "corral.db"));
  return {
    config,
    tag: dataTag(config.dataDir),
    events: new EventLog(db),
    runtime: new RuncRuntime(config.runtime, runcRoot, supervisor),
    supervisor,
    swapAccounting: swapAccounting(cgroupVersion()),
    sandboxesDir,
    close: () => db.close(),
  };
}
