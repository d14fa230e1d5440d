/**
 * One sandbox: planned as data, then created (layer, bundle, container), self-checked,
 * used, and destroyed. Every resource it makes is removed by `destroy`, and by `gc` if
 * the owning process dies first (the owner lock says whether it did).
 */
import { randomBytes } from "node:crypto";
import { mkdir, readFile, readlink, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { asCorralError, CorralError } from "../core/errors.js";
import type { Limits } from "../core/limits.js";
import { acquireLock, type Release } from "../core/lock.js";
import { processStartTime } from "../core/proc.js";
import {
  chooseLayerKind,
  type ImageRef,
  type SandboxPaths,
  type SandboxSpec,
  type TestOnlyWeakening,
} from "../core/sandbox.js";
import {
  type ContextChannel,
  type ContextStartOptions,
  type ExitInfo,
  SupervisorClient,
} from "../supervisor/client.js";
import type { Host } from "./host.js";
import {
  CgroupReader,
  type CgroupUsage,
  cgroupDirsWithPrefix,
  removeCgroupDir,
} from "./runtime/cgroups.js";
import { mountLayer, unmountLayer } from "./runtime/layer.js";
import { buildOciSpec } from "./runtime/oci-spec.js";
import { decideSelfCheck, NAMESPACES, type SelfCheckDecision } from "./self-check.js";

export function newSandboxId(): string {
  return `sb-${randomBytes(6).toString("hex")}`;
}

/** The lock a sandbox's owner holds for the sandbox's whole life. */
export function ownerLockName(tag: string, id: string): string {
  return `corral/${tag}/sandbox/${id}`;
}

export function cgroupNameFor(tag: string, id: string): string {
  return `corral-${tag}-${id}`;
}

export function sandboxPaths(host: Host, id: string): SandboxPaths {
  const dir = path.join(host.sandboxesDir, id);
  return {
    dir,
    bundle: path.join(dir, "bundle"),
    rootfs: path.join(dir, "rootfs"),
    layer: path.join(dir, "layer"),
    layerImage: path.join(dir, "layer.img"),
    socket: path.join(dir, "ctl.sock"),
    runcLog: path.join(dir, "runc.log"),
    supervisor: host.supervisor,
  };
}

export interface CreateOptions {
  image: ImageRef;
  limits: Limits;
  testOnly?: TestOnlyWeakening;
}

export interface ExecRequest {
  argv: string[];
  env?: Record<string, string>;
  cwd?: string;
  timeoutMs: number;
  outputCapBytes: number;
  /**
   * The program's stdin: bytes (then end of file) or a stream forwarded as it arrives
   * (`corral run -i`). Without it, stdin is /dev/null.
   */
  stdin?: Buffer | string | AsyncIterable<Buffer | string>;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
}

/** Output kept up to a cap while streaming; the full byte count is always known. */
export class CappedOutput {
  private readonly chunks: Buffer[] = [];
  kept = 0;
  total = 0;
  constructor(readonly cap: number) {}
  /** Record a chunk; returns the part within the cap (possibly empty) to stream on. */
  push(chunk: Buffer): Buffer {
    this.total += chunk.length;
    const room = this.cap - this.kept;
    if (room <= 0) return chunk.subarray(0, 0);
    const part = chunk.length <= room ? chunk : chunk.subarray(0, room);
    this.chunks.push(part);
    this.kept += part.length;
    return part;
  }
  get truncated(): boolean {
    return this.total > this.kept;
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

export interface ExecOutcome {
  exit: ExitInfo | null;
  /** Exit status as a shell reports it: the code, or 128 + signal. */
  exitCode: number;
  killed: "timeout" | "oom" | null;
  /** The supervisor itself died (OOM or otherwise): the whole sandbox is gone. */
  sandboxKilled: boolean;
  durationMs: number;
  stdout: CappedOutput;
  stderr: CappedOutput;
  usage: CgroupUsage;
}

export class Sandbox {
  private client: SupervisorClient | null = null;
  private stopped = false;
  private destroyed = false;
  selfCheck: SelfCheckDecision | null = null;

  private constructor(
    readonly host: Host,
    readonly spec: SandboxSpec,
    readonly paths: SandboxPaths,
    readonly cgroup: CgroupReader,
    private readonly releaseOwner: Release,
  ) {}

  get id(): string {
    return this.spec.id;
  }

  static async create(host: Host, options: CreateOptions): Promise<Sandbox> {
    const id = newSandboxId();
    const spec: SandboxSpec = {
      id,
      image: options.image,
      limits: options.limits,
      ids: host.config.ids,
      network: "none",
      hostname: "sandbox",
      ...(options.testOnly ? { testOnly: options.testOnly } : {}),
    };
    // The owner lock comes first: from the moment any resource exists, gc sees it owned.
    const release = await acquireLock(ownerLockName(host.tag, id));
    if (!release) throw new CorralError("internal", `sandbox id ${id} is already owned`);
    const paths = sandboxPaths(host, id);
    const cgroupsPath = `/${cgroupNameFor(host.tag, id)}`;
    const sandbox = new Sandbox(host, spec, paths, new CgroupReader(cgroupsPath), release);
    const started = Date.now();
    try {
      await mkdir(paths.dir, { mode: 0o711 });
      await writeFile(
        path.join(paths.dir, "owner.json"),
        JSON.stringify({
          kind: "process",
          pid: process.pid,
          startTime: await processStartTime(process.pid),
          created: new Date().toISOString(),
        }),
      );
      await mountLayer(paths, {
        kind: chooseLayerKind(spec.limits),
        diskBytes: spec.limits.diskBytes,
        inodes: spec.limits.inodes,
        rootUid: spec.ids.base,
        lowerdir: spec.image.rootfs,
      });
      const config = buildOciSpec({
        spec,
        rootfs: paths.rootfs,
        supervisorHostPath: paths.supervisor,
        kernelsHostDir: host.kernels,
        cgroupsPath,
        swapAccounting: host.swapAccounting,
      });
      await mkdir(paths.bundle, { mode: 0o711 });
      await writeFile(path.join(paths.bundle, "config.json"), JSON.stringify(config, null, 1));
      await host.runtime.start({
        id,
        bundle: paths.bundle,
        socketPath: paths.socket,
        logPath: paths.runcLog,
      });
      sandbox.client = await SupervisorClient.connect(paths.socket, { timeoutMs: 10_000 });
      await sandbox.client.hello();
      await sandbox.runSelfCheck();
      host.events.emit({
        principal: host.config.principal,
        sandbox: id,
        kind: "sandbox.create",
        details: {
          image: spec.image.digest,
          limits: spec.limits,
          layer: chooseLayerKind(spec.limits),
          runtime: host.runtime.name,
          ms: Date.now() - started,
          ...(spec.testOnly ? { testOnly: spec.testOnly } : {}),
        },
        outcome: "ok",
      });
      return sandbox;
    } catch (err) {
      const error = asCorralError(err);
      host.events.emit({
        principal: host.config.principal,
        sandbox: id,
        kind: "sandbox.create",
        details: { image: spec.image.digest, error: error.message, code: error.code },
        outcome: error.code === "self_check_failed" ? "denied" : "error",
      });
      await sandbox.destroy().catch(() => undefined);
      throw error;
    }
  }

  private async runSelfCheck(): Promise<void> {
    const report = await this.requireClient().probe();
    const hostNamespaces: Record<string, string> = {};
    for (const ns of NAMESPACES) {
      const link = await readlink(`/proc/self/ns/${ns}`);
      hostNamespaces[`ns.${ns}`] = /\[(\d+)\]/.exec(link)?.[1] ?? link;
    }
    const decision = decideSelfCheck({
      report,
      hostNamespaces,
      ids: this.spec.ids,
      limits: this.spec.limits,
      cgroup: await this.cgroup.limits(),
    });
    this.selfCheck = decision;
    this.host.events.emit({
      principal: this.host.config.principal,
      sandbox: this.id,
      kind: "sandbox.self_check",
      details: decision.ok
        ? { checks: decision.checks.length }
        : { failed: decision.failed, detail: decision.detail },
      outcome: decision.ok ? "ok" : "denied",
    });
    if (!decision.ok && !this.spec.testOnly?.ignoreSelfCheck) {
      throw new CorralError(
        "self_check_failed",
        `sandbox refused by the runtime self-check: ${decision.failed} (${decision.detail})`,
        "run corral doctor",
      );
    }
  }

  private requireClient(): SupervisorClient {
    if (!this.client || this.stopped)
      throw new CorralError("internal", `sandbox ${this.id} is not running`);
    return this.client;
  }

  /** Start a long-lived kernel under its own keeper (see ContextChannel). */
  startContext(opts: ContextStartOptions): ContextChannel {
    return this.requireClient().startContext(opts);
  }

  /** The supervisor channel, for the file API of a live sandbox (files.ts). */
  fileClient(): SupervisorClient {
    return this.requireClient();
  }

  /** Whether the sandbox still runs (its supervisor has not been lost or stopped). */
  get running(): boolean {
    return !this.stopped && this.client !== null;
  }

  async writeFile(file: string, data: Buffer | string, mode = 0o644): Promise<void> {
    await this.requireClient().writeFile(
      file,
      typeof data === "string" ? Buffer.from(data) : data,
      mode,
    );
  }

  /** Run one program to completion, streaming its output under the cap. */
  async exec(req: ExecRequest): Promise<ExecOutcome> {
    const client = this.requireClient();
    const stdout = new CappedOutput(req.outputCapBytes);
    const stderr = new CappedOutput(req.outputCapBytes);
    const before = await this.cgroup.usage();
    const started = performance.now();
    const env = { ...this.spec.image.env, HOME: "/root", LANG: "C.UTF-8", ...req.env };
    const handle = client.spawn({
      argv: req.argv,
      env,
      cwd: req.cwd ?? "/work",
      timeoutMs: req.timeoutMs,
      stdin: req.stdin !== undefined,
      onStdout: (c) => {
        const part = stdout.push(c);
        if (part.length > 0) req.onStdout?.(part);
      },
      onStderr: (c) => {
        const part = stderr.push(c);
        if (part.length > 0) req.onStderr?.(part);
      },
    });
    if (req.stdin !== undefined) void feedStdin(handle, req.stdin);
    // The supervisor enforces the timeout inside; this backstop covers a supervisor that
    // cannot (stopped, starved): past it the whole container is killed.
    let backstopFired = false;
    const backstop = setTimeout(() => {
      backstopFired = true;
      void this.host.runtime.kill(this.id);
    }, req.timeoutMs + 3000);
    let exit: ExitInfo | null = null;
    try {
      await handle.started;
      exit = await handle.exited;
    } catch (err) {
      // A lost supervisor is reported below as sandbox_killed; anything else is an error.
      const e = asCorralError(err);
      if (e.code !== "supervisor_failed") throw e;
    } finally {
      clearTimeout(backstop);
    }
    const durationMs = performance.now() - started;
    const usage = await this.cgroup.usage();
    const oom = (usage.oomKills ?? 0) > (before.oomKills ?? 0);
    const timedOut = exit?.timedOut === true || backstopFired;
    if (exit === null) {
      // The supervisor is gone, so the sandbox is: report why, from the kernel's counters.
      this.stopped = true;
      return {
        exit,
        exitCode: 137,
        killed: oom ? "oom" : timedOut ? "timeout" : null,
        sandboxKilled: true,
        durationMs,
        stdout,
        stderr,
        usage: diffUsage(before, usage),
      };
    }
    return {
      exit,
      exitCode: exit.how === "exited" ? exit.code : 128 + exit.code,
      // oom only from the cgroup's OOM-kill counter, never guessed from SIGKILL.
      killed: timedOut ? "timeout" : oom ? "oom" : null,
      sandboxKilled: false,
      durationMs,
      stdout,
      stderr,
      usage: diffUsage(before, usage),
    };
  }

  /** Kill every process of the sandbox but its supervisor (orphans of a finished run). */
  async killAll(): Promise<void> {
    await this.requireClient().killAll();
  }

  /** Stop the container (every process in it); the layer stays mounted for inspection. */
  async stop(): Promise<void> {
    if (this.stopped && this.client === null) return;
    this.stopped = true;
    this.client?.close();
    this.client = null;
    await this.host.runtime.kill(this.id).catch(() => undefined);
    await this.host.runtime.remove(this.id);
  }

  /** The writable layer's view of a directory of the sandbox (the overlay's upper dir). */
  upperPath(inside: string): string {
    return path.join(this.paths.layer, "upper", inside);
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    let failure: unknown = null;
    try {
      await this.stop();
    } catch (err) {
      failure = err;
    }
    try {
      await removeSandboxResources(this.host, this.id);
    } catch (err) {
      failure ??= err;
    }
    await this.releaseOwner();
    this.host.events.emit({
      principal: this.host.config.principal,
      sandbox: this.id,
      kind: "sandbox.destroy",
      details: {},
      outcome: failure ? "error" : "ok",
    });
    if (failure) throw asCorralError(failure);
  }
}

/** Write a program's stdin once it started, then close it; errors mean it already exited. */
async function feedStdin(
  handle: { started: Promise<number>; writeStdin(d: Buffer | string): void; closeStdin(): void },
  input: Buffer | string | AsyncIterable<Buffer | string>,
): Promise<void> {
  try {
    await handle.started;
    if (typeof input === "string" || Buffer.isBuffer(input)) {
      if (input.length > 0) handle.writeStdin(input);
    } else {
      for await (const chunk of input) handle.writeStdin(chunk);
    }
    handle.closeStdin();
  } catch {
    // the program is gone (or never started): its exit is what the caller sees
  }
}

function diffUsage(before: CgroupUsage, after: CgroupUsage): CgroupUsage {
  return {
    cpuUs: after.cpuUs === null ? null : after.cpuUs - (before.cpuUs ?? 0),
    peakMemoryBytes: after.peakMemoryBytes,
    oomKills: after.oomKills === null ? null : after.oomKills - (before.oomKills ?? 0),
  };
}

/**
 * Remove everything a sandbox may have left on the host, in dependency order: the
 * container, its mounts and loop device, its cgroups, its directory. Used by destroy and
 * by gc; each step tolerates what is already gone.
 */
export async function removeSandboxResources(host: Host, id: string): Promise<void> {
  await host.runtime.remove(id);
  const paths = sandboxPaths(host, id);
  await unmountLayer(paths);
  for (const dir of await cgroupDirsWithPrefix(cgroupNameFor(host.tag, id))) {
    await removeCgroupDir(dir);
  }
  await rm(paths.dir, { recursive: true, force: true });
}

export async function readOwner(host: Host, id: string): Promise<Record<string, unknown> | null> {
  try {
    return JSON.parse(await readFile(path.join(sandboxPaths(host, id).dir, "owner.json"), "utf8"));
  } catch {
    return null;
  }
}
