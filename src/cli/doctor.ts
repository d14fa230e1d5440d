/**
 * `corral doctor`: what this host enforces, what it does not, and how to fix it. It
 * gathers facts about the host (this file), decides the lines from them (the pure
 * decideHostLines), then starts real sandboxes and prints their self-checks.
 */
import { existsSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { CorralConfig } from "../core/config.js";
import { asCorralError } from "../core/errors.js";
import { DEFAULT_LIMITS, GiB } from "../core/limits.js";
import { runCommand } from "../core/proc.js";
import {
  type DoctorLine,
  decideHostLines,
  describeLayerMounts,
  type HostFacts,
} from "../sandbox/doctor-checks.js";
import { openHost } from "../sandbox/host.js";
import { loadImageRef } from "../sandbox/image-ref.js";
import { findOnPath, hostHardLimits } from "../sandbox/prerequisites.js";
import { probeDeviceUnder } from "../sandbox/runtime/block-devices.js";
import { CGROUP_ROOT, cgroupVersion, swapAccounting } from "../sandbox/runtime/cgroups.js";
import { classifyPoolFile } from "../sandbox/runtime/layer-pool.js";
import { REFUSED_SYSCALLS } from "../sandbox/runtime/seccomp.js";
import { Sandbox } from "../sandbox/sandbox.js";

async function readOr(file: string, fallback: string): Promise<string> {
  return readFile(file, "utf8").catch(() => fallback);
}

async function enabledControllers(version: 1 | 2): Promise<string[]> {
  if (version === 2) {
    return (await readOr(path.join(CGROUP_ROOT, "cgroup.subtree_control"), ""))
      .trim()
      .split(/\s+/)
      .filter(Boolean);
  }
  // /proc/cgroups: name, hierarchy, cgroups, enabled; a controller counts when it is
  // enabled and mounted (hierarchy > 0).
  return (await readOr("/proc/cgroups", ""))
    .split("\n")
    .filter((l) => l && !l.startsWith("#"))
    .map((l) => l.split(/\s+/))
    .filter((f) => f[3] === "1" && Number(f[1]) > 0)
    .map((f) => f[0]!);
}

export async function gatherHostFacts(config: CorralConfig): Promise<HostFacts> {
  const version = cgroupVersion();
  const controllers = await enabledControllers(version);
  const runtimePath = await findOnPath(config.runtime);
  const versionText = runtimePath
    ? ((await runCommand([runtimePath, "--version"]).catch(() => null))?.stdout ?? null)
    : null;
  const status = await readOr("/proc/self/status", "");
  let image: HostFacts["image"];
  try {
    const ref = await loadImageRef(config, "default");
    image = { ok: true, digest: ref.digest, dir: config.imageDir };
  } catch (err) {
    const e = asCorralError(err);
    image = { ok: false, message: e.message, hint: e.hint ?? "corral image build" };
  }
  const warmPools = await readWarmPools(config.dataDir);
  const poolDir = path.join(config.dataDir, "pool");
  const poolNames = await readdir(poolDir).catch(() => [] as string[]);
  return {
    uid: process.getuid?.() ?? -1,
    kernel: { release: os.release(), arch: os.arch() },
    runtime: { name: config.runtime, path: runtimePath, versionText },
    cgroup: {
      version,
      controllers,
      swapAccounting: swapAccounting(version),
      ioThrottle:
        version === 2
          ? controllers.includes("io")
          : existsSync(path.join(CGROUP_ROOT, "blkio", "blkio.throttle.read_bps_device")),
    },
    maxUserNamespaces: Number(
      (await readOr("/proc/sys/user/max_user_namespaces", "0")).trim() || 0,
    ),
    seccomp: /^Seccomp:\s+\d/m.test(status),
    seccompFilter: /^Seccomp_filters:\s+\d/m.test(status) || existsSync("/proc/sys/kernel/seccomp"),
    refusedSyscalls: REFUSED_SYSCALLS.length,
    loop: {
      losetup: (await findOnPath("losetup")) !== null,
      loopControl: existsSync("/dev/loop-control"),
    },
    mkfsExt4: (await findOnPath("mkfs.ext4")) !== null,
    debootstrap: (await findOnPath("debootstrap")) !== null,
    hardLimits: await hostHardLimits(),
    defaults: { ...DEFAULT_LIMITS },
    image,
    imageDevice: await probeDeviceUnder(existsSync(config.imageDir) ? config.imageDir : "/"),
    dataDevice: await probeDeviceUnder(existsSync(config.dataDir) ? config.dataDir : "/"),
    pool: {
      perShape: config.layerPool.perShape,
      shapes: config.layerPool.shapes,
      ready: poolNames.filter((n) => classifyPoolFile(n, config.layerPool.shapes).kind === "ready")
        .length,
      dir: poolDir,
    },
    warmPools,
  };
}

/** The warm pools' state files, each with whether its process still runs. */
async function readWarmPools(dataDir: string): Promise<HostFacts["warmPools"]> {
  const dir = path.join(dataDir, "warm-pool");
  const out: HostFacts["warmPools"] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    try {
      const st = JSON.parse(await readFile(path.join(dir, name), "utf8")) as Record<
        string,
        unknown
      >;
      const pid = Number(st.pid);
      let alive = false;
      try {
        process.kill(pid, 0);
        alive = true;
      } catch {
        alive = false;
      }
      out.push({
        key: String(st.key),
        pid,
        alive,
        size: Number(st.size),
        ready: Number(st.ready),
        handedOut: Number(st.handedOut),
        misses: Number(st.misses),
        failures: Number(st.failures),
        lastError: typeof st.lastError === "string" ? st.lastError : null,
      });
    } catch {
      // a file being written, or not ours: skip
    }
  }
  return out;
}

/**
 * Start real sandboxes and report their self-checks: one with the default limits, and,
 * when I/O limits can be enforced here, one with an (effectively unlimited) I/O limit,
 * which proves the throttles reach the cgroup on every device that carries I/O.
 */
async function probeLines(config: CorralConfig, withIo: boolean): Promise<DoctorLine[]> {
  const host = await openHost(config);
  try {
    const image = await loadImageRef(config, "default");
    const lines: DoctorLine[] = [];
    const probe = async (limits: typeof DEFAULT_LIMITS, only?: string) => {
      const sandbox = await Sandbox.create(host, { image, limits });
      try {
        for (const c of sandbox.selfCheck?.checks ?? []) {
          if (only && c.name !== only) continue;
          lines.push({
            status: c.ok ? "ok" : "missing",
            name: `self-check ${c.name}`,
            detail: c.detail,
          });
        }
      } finally {
        await sandbox.destroy();
      }
    };
    await probe({ ...DEFAULT_LIMITS });
    lines.push(describeLayerMounts(host.layerMounter.fallback, host.layerMounter.resident));
    if (withIo) {
      try {
        await probe({ ...DEFAULT_LIMITS, ioReadBps: 1024 * GiB }, "cgroup.io");
      } catch (err) {
        const e = asCorralError(err);
        lines.push({
          status: "missing",
          name: "self-check cgroup.io",
          detail: e.message,
          ...(e.hint ? { fix: e.hint } : {}),
        });
      }
    }
    return lines;
  } finally {
    host.close();
  }
}

export function formatDoctorLine(l: DoctorLine): string {
  return `${l.status.padEnd(8)} ${l.name.padEnd(28)} ${l.detail}${l.fix && l.status !== "ok" ? `  → ${l.fix}` : ""}`;
}

export async function doctorCommand(
  config: CorralConfig,
  flags: { json?: boolean },
): Promise<number> {
  const lines = decideHostLines(await gatherHostFacts(config));
  if (!lines.some((l) => l.status === "missing" && l.name !== "I/O limits")) {
    try {
      const io = lines.find((l) => l.name === "I/O limits");
      lines.push(...(await probeLines(config, io?.status !== "missing")));
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
  if (flags.json) {
    process.stdout.write(`${JSON.stringify(lines, null, 2)}\n`);
  } else {
    for (const l of lines) process.stdout.write(`${formatDoctorLine(l)}\n`);
  }
  return lines.some((l) => l.status === "missing") ? 1 : 0;
}
