/**
 * `corral doctor`: what this host enforces, what it does not, and how to fix it. It checks
 * the host's prerequisites, then starts a real sandbox and prints its self-check.
 */
import { readFile } from "node:fs/promises";
import os from "node:os";
import type { CorralConfig } from "../core/config.js";
import { asCorralError } from "../core/errors.js";
import { DEFAULT_LIMITS, formatBytes } from "../core/limits.js";
import { runCommand } from "../core/proc.js";
import { chooseLayerKind } from "../core/sandbox.js";
import { openHost } from "../sandbox/host.js";
import { loadImageRef } from "../sandbox/image-ref.js";
import { findOnPath, hostHardLimits, userNamespacesAvailable } from "../sandbox/prerequisites.js";
import { cgroupVersion, swapAccounting } from "../sandbox/runtime/cgroups.js";
import { REFUSED_SYSCALLS } from "../sandbox/runtime/seccomp.js";
import { Sandbox } from "../sandbox/sandbox.js";

type Status = "ok" | "degraded" | "missing";
interface Line {
  status: Status;
  name: string;
  detail: string;
  fix?: string;
}

async function hostChecks(config: CorralConfig): Promise<Line[]> {
  const lines: Line[] = [];
  const add = (status: Status, name: string, detail: string, fix?: string) =>
    lines.push({ status, name, detail, ...(fix ? { fix } : {}) });

  add(
    process.getuid?.() === 0 ? "ok" : "missing",
    "root",
    `uid ${process.getuid?.()}`,
    "run as root",
  );
  add("ok", "kernel", `${os.release()} ${os.arch()}`);
  const runc = await findOnPath(config.runtime);
  if (runc) {
    const v = await runCommand([runc, "--version"]).catch(() => null);
    const version = /version\s+(\S+)/.exec(v?.stdout ?? "")?.[1] ?? "unknown";
    add("ok", "runtime", `${config.runtime} ${version} at ${runc}`);
  } else {
    add("missing", "runtime", `${config.runtime} not found`, "apt-get install runc");
  }
  const cg = cgroupVersion();
  let controllers = "";
  try {
    controllers =
      cg === 2
        ? (await readFile("/sys/fs/cgroup/cgroup.controllers", "utf8")).trim()
        : (await readFile("/proc/cgroups", "utf8"))
            .split("\n")
            .filter((l) => l && !l.startsWith("#") && l.trim().endsWith("1"))
            .map((l) => l.split("\t")[0])
            .join(" ");
  } catch {
    // unknown
  }
  add(
    "ok",
    "cgroups",
    `v${cg}${cg === 1 ? " (hybrid or legacy; tested)" : " (unified; mapped, untested here)"}: ${controllers}`,
  );
  add(
    swapAccounting(cg) ? "ok" : "degraded",
    "memory.swap",
    swapAccounting(cg)
      ? "memory+swap limited to the memory limit"
      : "swap accounting off: a sandbox could swap",
    "boot with swapaccount=1",
  );
  add(
    (await userNamespacesAvailable()) ? "ok" : "missing",
    "user namespaces",
    `max_user_namespaces ${(await readFile("/proc/sys/user/max_user_namespaces", "utf8").catch(() => "0")).trim()}`,
    "sysctl -w user.max_user_namespaces=15000",
  );
  const seccomp = /^Seccomp:\s+(\d)/m.exec(await readFile("/proc/self/status", "utf8"));
  add(
    seccomp ? "ok" : "missing",
    "seccomp",
    seccomp
      ? `allowlist, default EPERM; ${REFUSED_SYSCALLS.length} syscalls refused by name`
      : "kernel lacks seccomp",
  );
  const loop = await findOnPath("losetup");
  add(
    loop ? "ok" : "missing",
    "loop devices",
    loop ? "losetup present" : "losetup missing",
    "apt-get install mount",
  );
  const mkfs = await findOnPath("mkfs.ext4");
  const layer = chooseLayerKind(DEFAULT_LIMITS);
  add(
    mkfs ? "ok" : "missing",
    "disk limit",
    `${layer} for the default ${formatBytes(DEFAULT_LIMITS.diskBytes)} disk (tmpfs when disk ≤ half the memory limit, since tmpfs counts as memory)`,
    "apt-get install e2fsprogs",
  );
  const hard = await hostHardLimits();
  add("ok", "rlimits", `host hard limits: open files ${hard.nofile}, file size ${hard.fsize}`);
  add(
    (await findOnPath("debootstrap")) ? "ok" : "missing",
    "debootstrap",
    "needed to build images",
    "apt-get install debootstrap",
  );
  try {
    const image = await loadImageRef(config, "default");
    add("ok", "image", `default ${image.digest.slice(0, 19)} in ${config.imageDir}`);
  } catch (err) {
    const e = asCorralError(err);
    add("missing", "image", e.message, e.hint ?? "corral image build");
  }
  return lines;
}

async function probeLines(config: CorralConfig): Promise<Line[]> {
  const host = await openHost(config);
  try {
    const image = await loadImageRef(config, "default");
    const sandbox = await Sandbox.create(host, { image, limits: { ...DEFAULT_LIMITS } });
    try {
      const decision = sandbox.selfCheck;
      return (decision?.checks ?? []).map((c) => ({
        status: c.ok ? ("ok" as const) : ("missing" as const),
        name: `self-check ${c.name}`,
        detail: c.detail,
      }));
    } finally {
      await sandbox.destroy();
    }
  } finally {
    host.close();
  }
}

export async function doctorCommand(
  config: CorralConfig,
  flags: { json?: boolean },
): Promise<number> {
  const lines = await hostChecks(config);
  if (!lines.some((l) => l.status === "missing")) {
    try {
      lines.push(...(await probeLines(config)));
    } catch (err) {
      const e = asCorralError(err);
      lines.push({
        status: "missing",
        name: "self-check",
        detail: e.message,
        ...(e.hint ? { fix: e.hint } : {}),
      });
    }
  } else {
    lines.push({
      status: "missing",
      name: "self-check",
      detail: "not run: fix the missing prerequisites first",
    });
  }
  lines.push({
    status: "degraded",
    name: "not enforced yet",
    detail: "block I/O and network bandwidth limits (later); network is loopback-only, no egress",
  });
  if (flags.json) {
    process.stdout.write(`${JSON.stringify(lines, null, 2)}\n`);
  } else {
    for (const l of lines) {
      process.stdout.write(
        `${l.status.padEnd(8)} ${l.name.padEnd(28)} ${l.detail}${l.fix && l.status !== "ok" ? `  → ${l.fix}` : ""}\n`,
      );
    }
  }
  return lines.some((l) => l.status === "missing") ? 1 : 0;
}
