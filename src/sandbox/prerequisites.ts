/**
 * Host prerequisites, checked before anything is created so that a missing piece is one
 * clear line, not a runc stack of errors. `corral doctor` reports the same facts.
 */
import { access, constants, readFile } from "node:fs/promises";
import path from "node:path";
import type { CorralConfig } from "../core/config.js";
import { CorralError } from "../core/errors.js";
import type { Limits } from "../core/limits.js";

export async function findOnPath(binary: string): Promise<string | null> {
  if (binary.includes("/")) {
    try {
      await access(binary, constants.X_OK);
      return binary;
    } catch {
      return null;
    }
  }
  for (const dir of (process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin").split(":")) {
    const candidate = path.join(dir, binary);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // next
    }
  }
  return null;
}

/** The hard limits of this process (`/proc/self/limits`), by the names used there. */
export async function hostHardLimits(): Promise<{ nofile: number; fsize: number }> {
  const text = await readFile("/proc/self/limits", "utf8");
  const hard = (label: string): number => {
    const line = text.split("\n").find((l) => l.startsWith(label));
    const value = line?.slice(label.length).trim().split(/\s+/)[1];
    return value === undefined || value === "unlimited" ? Number.POSITIVE_INFINITY : Number(value);
  };
  return { nofile: hard("Max open files"), fsize: hard("Max file size") };
}

export async function userNamespacesAvailable(): Promise<boolean> {
  try {
    const max = Number((await readFile("/proc/sys/user/max_user_namespaces", "utf8")).trim());
    if (max <= 0) return false;
  } catch {
    return false;
  }
  // kernel.unprivileged_userns_clone (Debian) gates only unprivileged callers; Corral is root.
  return true;
}

export async function checkHostPrerequisites(config: CorralConfig, limits?: Limits): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new CorralError(
      "prerequisite_missing",
      "must run as root: Corral mounts layers and drives runc",
      "run it with sudo",
    );
  }
  if (!(await findOnPath(config.runtime))) {
    throw new CorralError(
      "prerequisite_missing",
      `the OCI runtime "${config.runtime}" is not installed`,
      "apt-get install runc, or run corral demo --yes",
    );
  }
  if (!(await userNamespacesAvailable())) {
    throw new CorralError(
      "prerequisite_missing",
      "user namespaces are disabled on this host; Corral requires them",
      "sysctl -w user.max_user_namespaces=15000",
    );
  }
  if (limits) {
    const hard = await hostHardLimits();
    if (limits.openFiles > hard.nofile) {
      throw new CorralError(
        "invalid_argument",
        `open files limit ${limits.openFiles} is above the host's hard limit ${hard.nofile}`,
        `use --open-files ${hard.nofile} or less`,
      );
    }
    if (limits.fileSizeBytes > hard.fsize) {
      throw new CorralError(
        "invalid_argument",
        `file size limit ${limits.fileSizeBytes} is above the host's hard limit ${hard.fsize}`,
      );
    }
  }
}
