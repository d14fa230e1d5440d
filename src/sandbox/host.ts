/**
 * The host side of one Corral instance: its data directory, event log, runtime and the
 * supervisor binary that sandboxes run. Opened once per process (CLI command or server).
 */
import { createHash } from "node:crypto";
import { readdirSync, readlinkSync } from "node:fs";
import {
  chmod,
  copyFile,
  mkdir,
  readFile,
  realpath,
  rename,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import path from "node:path";
import { EventLog } from "../audit/events.js";
import { type CorralConfig, dataTag } from "../core/config.js";
import { CorralError } from "../core/errors.js";
import { packageRoot } from "../core/package-root.js";
import { openDb } from "../store/db.js";
import { supervisorBinaryPath } from "../supervisor/paths.js";
import { cgroupVersion, swapAccounting } from "./runtime/cgroups.js";
import { LayerMounter } from "./runtime/layer.js";
import { LayerPool } from "./runtime/layer-pool.js";
import { RuncRuntime, type Runtime } from "./runtime/runc.js";
import { cgroupNameFor } from "./sandbox.js";

export interface Host {
  config: CorralConfig;
  /** Names this data directory in host-global namespaces (cgroups, locks). */
  tag: string;
  events: EventLog;
  runtime: Runtime;
  /** The supervisor binary, copied into the data directory so the mapped range can reach it. */
  supervisor: string;
  /** The kernel drivers' directory (installKernels), mounted at /.corral/kernels. */
  kernels: string;
  swapAccounting: boolean;
  /** Where /sys/block's links point (the host's disks in sysfs), for the sandbox's masks. */
  sysBlockTargets: string[];
  sandboxesDir: string;
  /** Pre-made writable layers (see runtime/layer-pool.ts); null when disabled. */
  layerPool: LayerPool | null;
  /** Mounts and unmounts sandboxes' roots (the supervisor's layer modes, or mount(8)). */
  layerMounter: LayerMounter;
  /** Close the event store and stop the layer pool (aborting an entry being made). */
  close(): void;
}

/** Every directory from / down to `dir` must be traversable by the sandbox's unprivileged ids. */
/** The lock that one filler at a time holds for a data directory's layer pool. */
export function layerPoolLockName(tag: string): string {
  return `corral/${tag}/layer-pool`;
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

export { ensureDir } from "../core/dirs.js";

import { ensureDir } from "../core/dirs.js";

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

/** The in-sandbox kernel drivers, by the file name they have under /.corral/kernels. */
export const KERNEL_DRIVERS: Record<string, string> = {
  // The pipe framing the Python and SQL drivers import (beside them on sys.path).
  "corral_frames.py": "src/kernels/frames.py",
  "python.py": "src/kernels/python/driver.py",
  "r.R": "src/kernels/r/driver.R",
  "shell.sh": "src/kernels/shell/driver.sh",
  "sql.py": "src/kernels/sql/driver.py",
};

/**
 * Copy the kernel drivers into a content-addressed directory of the data directory, for
 * the same reason as the supervisor: the sandbox's ids must be able to read them, which
 * a checkout under a 0700 home directory would not allow. Mounted read-only in every
 * sandbox at /.corral/kernels.
 */
async function installKernels(dataDir: string): Promise<string> {
  const files: [string, Buffer][] = [];
  const hash = createHash("sha256");
  for (const [name, rel] of Object.entries(KERNEL_DRIVERS)) {
    const bytes = await readFile(path.join(packageRoot(), rel));
    files.push([name, bytes]);
    hash.update(name).update("\0").update(bytes).update("\0");
  }
  const target = path.join(dataDir, "bin", `kernels-${hash.digest("hex").slice(0, 16)}`);
  try {
    await stat(target);
    return target;
  } catch {
    // not installed yet
  }
  const tmp = `${target}.${process.pid}.tmp`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true, mode: 0o755 });
  for (const [name, bytes] of files) await writeFile(path.join(tmp, name), bytes, { mode: 0o644 });
  await chmod(tmp, 0o755);
  try {
    await rename(tmp, target);
  } catch (err) {
    // another process installed the same content first
    await rm(tmp, { recursive: true, force: true });
    if (
      (err as NodeJS.ErrnoException).code !== "ENOTEMPTY" &&
      (err as NodeJS.ErrnoException).code !== "EEXIST"
    )
      throw err;
  }
  return target;
}

/**
 * The supervisor's layer modes follow no symbolic link in any path they are given; a data
 * or image directory configured through one is served by mount(8) instead, as before.
 */
async function symlinkedDirs(config: CorralConfig): Promise<string | null> {
  for (const dir of [config.dataDir, config.imageDir]) {
    const real = await realpath(dir).catch(() => dir);
    if (real !== path.resolve(dir)) {
      return `${dir} is reached through a symbolic link (${real}): the direct layer mounts follow none`;
    }
  }
  return null;
}

/**
 * The targets of /sys/block's links but loop devices', as absolute paths (none when it
 * cannot be read). Read once per host, at open.
 */
function sysBlockTargets(): string[] {
  try {
    // Loop devices (a hundred, on a busy host) are virtual, masked whole: not read at all.
    return readdirSync("/sys/block")
      .filter((n) => !/^loop\d+$/.test(n))
      .map((n) => path.resolve("/sys/block", readlinkSync(path.join("/sys/block", n))));
  } catch {
    return [];
  }
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
  const kernels = await installKernels(config.dataDir);
  const db = openDb(path.join(config.dataDir, "corral.db"));
  const layerPool =
    config.layerPool.perShape > 0
      ? new LayerPool(
          path.join(config.dataDir, "pool"),
          config.layerPool.shapes,
          config.layerPool.perShape,
          layerPoolLockName(dataTag(config.dataDir)),
        )
      : null;
  const layerMounter = new LayerMounter(supervisor, await symlinkedDirs(config), sandboxesDir);
  const events = new EventLog(db);
  return {
    config,
    tag: dataTag(config.dataDir),
    layerMounter,
    events,
    runtime: new RuncRuntime(config.runtime, runcRoot, supervisor, (id) =>
      cgroupNameFor(dataTag(config.dataDir), id),
    ),
    supervisor,
    kernels,
    swapAccounting: swapAccounting(cgroupVersion()),
    sysBlockTargets: sysBlockTargets(),
    sandboxesDir,
    layerPool,
    close: () => {
      layerPool?.close();
      layerMounter.close();
      events.flush();
      db.close();
    },
  };
}
