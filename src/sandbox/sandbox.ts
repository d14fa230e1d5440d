/**
 * One sandbox: planned as data, then created (layer, bundle, container), self-checked,
 * used, and destroyed. Every resource it makes is removed by `destroy`, and by `gc` if
 * the owning process dies first (the owner lock says whether it did).
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { asCorralError, CorralError } from "../core/errors.js";
import { hasIoLimits, type Limits } from "../core/limits.js";
import { acquireLock, type Release } from "../core/lock.js";
import { processStartTime } from "../core/proc.js";
import type { HostInput } from "../core/run-options.js";
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
import { type CopiedFile, copyHostInputs } from "./host-inputs.js";
import { findIoCarriers } from "./runtime/block-devices.js";
import type { CarrierDevice, OciBlockIo } from "./runtime/block-io.js";
import {
  CgroupReader,
  type CgroupUsage,
  cgroupDirsNamed,
  removeCgroupDir,
} from "./runtime/cgroups.js";
import { type LayerSource, mountLayer, unmountLayer } from "./runtime/layer.js";
import { mountsUnderSync } from "./runtime/mounts.js";
import { buildOciSpec, type OciConfig } from "./runtime/oci-spec.js";
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
  /** Host files and directories copied into the writable layer before the sandbox starts. */
  inputs?: readonly HostInput[];
  /** A working directory to make (if missing) before the sandbox starts. */
  workdir?: string;
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
  /** What the writer wrote in all, as the supervisor counted it (it sends only the cap). */
  noteTotal(bytes: number): void {
    if (bytes > this.total) this.total = bytes;
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

/** A program started with `Sandbox.start`. */
export interface RunningProcess {
  /** The pid inside the sandbox; rejects if the program could not start. */
  pid: Promise<number>;
  outcome: Promise<ExecOutcome>;
  writeStdin(data: Buffer | string): void;
  closeStdin(): void;
  /** Sent to the program's process group. */
  signal(signo: number): void;
  /** Output so far, within the cap. */
  stdout: CappedOutput;
  stderr: CappedOutput;
}

/** Milliseconds spent in each named step, for the create event and the benchmark. */
export class PhaseTimer {
  readonly ms: Record<string, number> = {};
  async time<T>(name: string, step: () => Promise<T>): Promise<T> {
    const t = performance.now();
    try {
      return await step();
    } finally {
      this.add(name, t);
    }
  }
  /** The same for a synchronous step (which must not yield: callers rely on its order). */
  timeSync<T>(name: string, step: () => T): T {
    const t = performance.now();
    try {
      return step();
    } finally {
      this.add(name, t);
    }
  }
  private add(name: string, since: number): void {
    this.ms[name] = Math.round((performance.now() - since) * 100) / 100 + (this.ms[name] ?? 0);
  }
}

/** A new sandbox's identity, plan and paths, with its owner lock held. */
export interface OwnedSandbox {
  spec: SandboxSpec;
  paths: SandboxPaths;
  cgroupsPath: string;
  release: Release;
}

export async function ownNewSandbox(host: Host, options: CreateOptions): Promise<OwnedSandbox> {
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
  return {
    spec,
    paths: sandboxPaths(host, id),
    cgroupsPath: `/${cgroupNameFor(host.tag, id)}`,
    release,
  };
}

export interface LaidOutSandbox {
  /** The config.json written to the bundle. */
  config: OciConfig;
  layerSource: LayerSource;
  /** The layer's loop device, if layer-up reported it. */
  loopDevice: string | null;
}

/** This process's start time, for owner records (read once: it never changes). */
let ownStart: Promise<string | null> | null = null;
function ownStartTime(): Promise<string | null> {
  ownStart ??= processStartTime(process.pid);
  return ownStart;
}

/**
 * Everything on the host before the container starts: the sandbox's directory and owner
 * record, its root (image + writable layer), the devices to throttle, and the bundle's
 * config.json. The caller owns the result: removeSandboxResources undoes it.
 */
export async function layOutSandbox(
  host: Host,
  owned: OwnedSandbox,
  phases: PhaseTimer = new PhaseTimer(),
): Promise<LaidOutSandbox> {
  const { spec, paths } = owned;
  // Our own small files, written synchronously: each call takes microseconds, less than
  // the thread-pool round trip of its asynchronous twin.
  const startTime = await ownStartTime();
  phases.timeSync("dir", () => {
    mkdirSync(paths.dir, { mode: 0o711 });
    writeFileSync(
      path.join(paths.dir, "owner.json"),
      JSON.stringify({
        kind: "process",
        pid: process.pid,
        startTime,
        created: new Date().toISOString(),
      }),
    );
  });
  const layer = await phases.time("layer", () =>
    mountLayer(
      paths,
      {
        kind: chooseLayerKind(spec.limits),
        diskBytes: spec.limits.diskBytes,
        inodes: spec.limits.inodes,
        rootUid: spec.ids.base,
        lowerdir: spec.image.rootfs,
      },
      host.layerPool,
      host.layerMounter,
    ),
  );
  // The layer's loop device exists only now that it is mounted: find the devices to
  // throttle after mounting, and only when an I/O limit asks for it.
  let blockDevices: CarrierDevice[] | undefined;
  if (hasIoLimits(spec.limits)) {
    blockDevices = await phases.time("io_devices", () =>
      findIoCarriers({
        imageRootfs: spec.image.rootfs,
        dataDir: host.config.dataDir,
        layerMount: paths.layer,
      }),
    );
  }
  const config = await phases.time("bundle", async () => {
    const config = buildOciSpec({
      spec,
      rootfs: paths.rootfs,
      supervisorHostPath: paths.supervisor,
      kernelsHostDir: host.kernels,
      cgroupsPath: owned.cgroupsPath,
      swapAccounting: host.swapAccounting,
      sysBlockTargets: host.sysBlockTargets,
      ...(blockDevices ? { blockDevices } : {}),
    });
    mkdirSync(paths.bundle, { mode: 0o711 });
    writeFileSync(path.join(paths.bundle, "config.json"), JSON.stringify(config, null, 1));
    return config;
  });
  return { config, layerSource: layer.source, loopDevice: layer.loopDevice };
}

/**
 * How long past a program's own timeout the host waits before it kills the whole sandbox:
 * the supervisor's 5 s wait for a child that was stopped before exec (its START_TIMEOUT_MS),
 * plus slack. Below that, code that stops its own children would get its sandbox killed.
 */
const BACKSTOP_GRACE_MS = 8000;

export class Sandbox {
  private client: SupervisorClient | null = null;
  private stopped = false;
  /** Whether stop saw every process of the container gone (destroy then overlaps steps). */
  private dead = false;
  /** The layer's loop device, if known (teardown then checks only that one). */
  private loopDevice: string | null = null;
  selfCheck: SelfCheckDecision | null = null;
  /** The regular files `CreateOptions.inputs` copied in. */
  copiedInputs: CopiedFile[] = [];
  /** Where the writable layer came from: tmpfs, the layer pool, or its own mkfs. */
  layerSource: LayerSource | null = null;
  /** How long each step of create took, in ms (also in the sandbox.create event). */
  createPhases: Record<string, number> = {};
  /** The block I/O throttles planned for this sandbox (config.json), if it has I/O limits. */
  blockIo: OciBlockIo | undefined;

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
    const started = performance.now();
    const phases = new PhaseTimer();
    const owned = await ownNewSandbox(host, options);
    const { spec, paths, cgroupsPath } = owned;
    const sandbox = new Sandbox(host, spec, paths, new CgroupReader(cgroupsPath), owned.release);
    try {
      const laid = await layOutSandbox(host, owned, phases);
      sandbox.blockIo = laid.config.linux.resources.blockIO;
      sandbox.layerSource = laid.layerSource;
      sandbox.loopDevice = laid.loopDevice;
      if ((options.inputs?.length ?? 0) > 0 || options.workdir !== undefined) {
        // Before the container starts: nothing runs in the root yet (see host-inputs.ts).
        sandbox.copiedInputs = await phases.time("inputs", () =>
          copyHostInputs(paths.rootfs, options.inputs ?? [], {
            rootUid: spec.ids.base,
            ...(options.workdir !== undefined ? { workdir: options.workdir } : {}),
          }),
        );
      }
      // The shim binds the socket before it starts runc, so the connection, the greeting
      // and the self-check's probe go out while runc works, and the supervisor answers
      // them (in order) as soon as it runs. Nothing it says counts before runc has
      // reported that the container started.
      const giveUp = new AbortController();
      const connecting = SupervisorClient.connect(paths.socket, {
        timeoutMs: 10_000,
        signal: giveUp.signal,
      });
      const asked = connecting.then((client) => {
        const hello = client.hello();
        const probe = client.probe();
        // Awaited below; a failure before then (runc failed, the socket closed) is not
        // an unhandled one.
        hello.catch(() => undefined);
        probe.catch(() => undefined);
        return { hello, probe };
      });
      asked.catch(() => undefined);
      try {
        await phases.time("runc_start", () =>
          host.runtime.start({
            id: spec.id,
            bundle: paths.bundle,
            socketPath: paths.socket,
            logPath: paths.runcLog,
          }),
        );
      } catch (err) {
        giveUp.abort();
        (await connecting.catch(() => null))?.close();
        throw err;
      }
      sandbox.client = await phases.time("connect", () => connecting);
      const { hello, probe } = await asked;
      await phases.time("self_check", () => sandbox.runSelfCheck(hello, probe));
      sandbox.createPhases = phases.ms;
      host.events.emit({
        principal: host.config.principal,
        sandbox: spec.id,
        kind: "sandbox.create",
        details: {
          image: spec.image.digest,
          limits: spec.limits,
          layer: chooseLayerKind(spec.limits),
          layerSource: laid.layerSource,
          runtime: host.runtime.name,
          ...(sandbox.blockIo ? { blockIO: sandbox.blockIo } : {}),
          ms: Math.round(performance.now() - started),
          phases: phases.ms,
          ...(spec.testOnly ? { testOnly: spec.testOnly } : {}),
        },
        outcome: "ok",
      });
      return sandbox;
    } catch (err) {
      const error = asCorralError(err);
      host.events.emit({
        principal: host.config.principal,
        sandbox: spec.id,
        kind: "sandbox.create",
        details: { image: spec.image.digest, error: error.message, code: error.code },
        outcome: error.code === "self_check_failed" ? "denied" : "error",
      });
      await sandbox.destroy().catch(() => undefined);
      throw error;
    }
  }

  private async runSelfCheck(
    hello: Promise<unknown>,
    probe: Promise<Record<string, string>>,
  ): Promise<void> {
    const cgroup = this.cgroup.limitsNow({ io: this.blockIo !== undefined });
    await hello; // a failed greeting is the error to report
    const report = await probe;
    const hostNamespaces: Record<string, string> = {};
    for (const ns of NAMESPACES) {
      // A kernel pseudo-link that answers at once: read in place, not through the pool.
      const link = readlinkSync(`/proc/self/ns/${ns}`);
      hostNamespaces[`ns.${ns}`] = /\[(\d+)\]/.exec(link)?.[1] ?? link;
    }
    const decision = decideSelfCheck({
      report,
      hostNamespaces,
      ids: this.spec.ids,
      limits: this.spec.limits,
      cgroup,
      blockIo: this.blockIo,
    });
    this.selfCheck = decision;
    // Committed with the sandbox.create event that always follows (success or failure).
    this.host.events.defer({
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
    this.userCodeStarted = true;
    return this.requireClient().startContext(opts);
  }

  /**
   * Whether anything of the user's has run: from then on the root may hold links that the
   * user planted, and only the confined file API (files.ts) may write into it.
   */
  private userCodeStarted = false;

  /** The supervisor channel, for the file API of a live sandbox (files.ts). */
  fileClient(): SupervisorClient {
    return this.requireClient();
  }

  /**
   * Every program's environment before the caller's: the image's, HOME and LANG, and,
   * with no network, pip told not to retry (it would spend 8 s backing off from a
   * network that is not there before saying so).
   */
  baseEnv(): Record<string, string> {
    return {
      ...this.spec.image.env,
      HOME: "/root",
      LANG: "C.UTF-8",
      ...(this.spec.network === "none"
        ? { PIP_RETRIES: "0", PIP_DISABLE_PIP_VERSION_CHECK: "1" }
        : {}),
    };
  }

  /** Bytes the host has received from the sandbox's supervisor (0 once stopped). */
  get supervisorBytesRead(): number {
    return this.client?.bytesRead ?? 0;
  }

  /** Whether the sandbox still runs (its supervisor has not been lost or stopped). */
  get running(): boolean {
    return !this.stopped && this.client !== null;
  }

  /**
   * Put a file in place before any user code runs (the one-shot path's code file and
   * inputs). The supervisor's WRITE_FILE refuses a symlink only in the last component,
   * which is safe only while nothing of the user's has run; after that, writes go through
   * the confined file API.
   */
  async writeFile(file: string, data: Buffer | string, mode = 0o644): Promise<void> {
    if (this.userCodeStarted) {
      throw new CorralError(
        "internal",
        "Sandbox.writeFile after user code started: use the session's file API",
      );
    }
    await this.requireClient().writeFile(
      file,
      typeof data === "string" ? Buffer.from(data) : data,
      mode,
    );
  }

  /** Run one program to completion, streaming its output under the cap. */
  exec(req: ExecRequest): Promise<ExecOutcome> {
    return this.start(req).outcome;
  }

  /**
   * Start one program and return at once: its pid once it runs, its stdin, signals, and
   * the outcome once it has exited. With `stdinPipe` the caller feeds stdin itself.
   */
  start(req: ExecRequest & { stdinPipe?: boolean }): RunningProcess {
    const client = this.requireClient();
    this.userCodeStarted = true;
    const stdout = new CappedOutput(req.outputCapBytes);
    const stderr = new CappedOutput(req.outputCapBytes);
    const before = this.cgroup.usageNow();
    const started = performance.now();
    const env = { ...this.baseEnv(), ...req.env };
    const handle = client.spawn({
      argv: req.argv,
      env,
      cwd: req.cwd ?? "/work",
      timeoutMs: req.timeoutMs,
      stdin: req.stdin !== undefined || req.stdinPipe === true,
      // Past the cap the supervisor only counts: a flood costs the host nothing.
      outputCapBytes: req.outputCapBytes,
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
    const finish = async (): Promise<ExecOutcome> => {
      // The supervisor enforces the timeout inside; this backstop covers a supervisor that
      // cannot (stopped, starved): past it the whole container is killed.
      let backstopFired = false;
      const backstop =
        req.timeoutMs > 0
          ? setTimeout(() => {
              backstopFired = true;
              // As at stop: a process blocked in throttled I/O would outlive the kill.
              if (this.blockIo !== undefined) this.cgroup.liftIoThrottles();
              void this.host.runtime.kill(this.id);
            }, req.timeoutMs + BACKSTOP_GRACE_MS)
          : null;
      let exit: ExitInfo | null = null;
      try {
        await handle.started;
        exit = await handle.exited;
      } catch (err) {
        // A lost supervisor is reported below as sandbox_killed; anything else is an error.
        const e = asCorralError(err);
        if (e.code !== "supervisor_failed") throw e;
      } finally {
        if (backstop) clearTimeout(backstop);
      }
      const durationMs = performance.now() - started;
      const usage = this.cgroup.usageNow();
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
      stdout.noteTotal(exit.stdoutBytes);
      stderr.noteTotal(exit.stderrBytes);
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
    };
    return {
      pid: handle.started,
      outcome: finish(),
      writeStdin: (d) => handle.writeStdin(d),
      closeStdin: () => handle.closeStdin(),
      signal: (signo) => handle.signal(signo),
      stdout,
      stderr,
    };
  }

  /** Kill every process of the sandbox but its supervisor (orphans of a finished run). */
  async killAll(): Promise<void> {
    await this.requireClient().killAll();
  }

  /** Stop the container (every process in it); the layer stays mounted for inspection. */
  async stop(phases: PhaseTimer = new PhaseTimer()): Promise<void> {
    if (this.stopped && this.client === null) return;
    this.stopped = true;
    this.client?.close();
    this.client = null;
    // A process blocked in throttled I/O cannot die until its I/O is done: lift the
    // throttles first, so that the kill takes at once (no code of the sandbox's runs on).
    if (this.blockIo !== undefined) this.cgroup.liftIoThrottles();
    // Kill first, then delete (at destroy): `runc delete --force` of a running container
    // polls for its death in 100 ms steps, while a stopped one is deleted at once.
    await phases.time("kill", () =>
      this.host.runtime.stop(this.id).then(
        (reaped) => {
          this.dead = reaped;
        },
        () => undefined,
      ),
    );
  }

  /** The writable layer's view of a directory of the sandbox (the overlay's upper dir). */
  upperPath(inside: string): string {
    return path.join(this.paths.layer, "upper", inside);
  }

  /**
   * Stop and remove everything of the sandbox. A second call (Ctrl-C during the first,
   * say) waits for the same teardown: it resolves only once the sandbox is gone and its
   * destroy event recorded, so the caller may then close the host.
   */
  destroy(phases: PhaseTimer = new PhaseTimer()): Promise<void> {
    this.destroying ??= this.teardown(phases);
    return this.destroying;
  }

  private destroying: Promise<void> | null = null;

  private async teardown(phases: PhaseTimer): Promise<void> {
    let failure: unknown = null;
    try {
      await this.stop(phases);
    } catch (err) {
      failure = err;
    }
    try {
      await removeSandboxResources(this.host, this.id, phases, {
        dead: this.dead,
        loopDevice: this.loopDevice,
      });
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
 * container (and with it the cgroups runc made) alongside its mounts and loop device and
 * then its directory, then any cgroup still left. Used by destroy and by gc; each step
 * tolerates what is already gone.
 */
export async function removeSandboxResources(
  host: Host,
  id: string,
  phases: PhaseTimer = new PhaseTimer(),
  /**
   * `dead`: every process of the container is known gone (Sandbox.stop saw it reaped);
   * `loopDevice`: the layer's loop device, when known.
   */
  known: { dead?: boolean; loopDevice?: string | null } = {},
): Promise<void> {
  const paths = sandboxPaths(host, id);
  // The mounts, then the directory (never before: rm would reach into a mounted layer).
  // What of the directory holds no mount point nor the layer's file (the bundle, the
  // logs) goes while the unmount runs, and so does runc's state (it is elsewhere) once
  // nothing of the container runs. Synchronous where it is our own few small files: each
  // such call takes microseconds, less than the thread-pool round trip of its twin.
  const unmountThenRemove = async () => {
    const mounts = mountsUnderSync(paths.dir);
    const held = new Set([
      path.basename(paths.layerImage),
      ...mounts.map((m) => path.relative(paths.dir, m).split(path.sep)[0]),
    ]);
    // Asked for first (unmountLayer sends the plan before it first waits): layer-serve
    // carries it out while the rest goes.
    const unmounted = phases.time("unmount", () =>
      unmountLayer(paths, host.layerMounter, mounts, known.loopDevice ?? null),
    );
    let names: string[] = [];
    try {
      names = readdirSync(paths.dir);
    } catch {
      // gone already
    }
    for (const n of names) {
      if (!held.has(n)) rmSync(path.join(paths.dir, n), { recursive: true, force: true });
    }
    await unmounted;
    phases.timeSync("rm", () => {
      // Detached and unmounted: the layer's file goes to the pool to be deleted there.
      host.layerPool?.discard(paths.layerImage);
      rmSync(paths.dir, { recursive: true, force: true });
    });
  };
  if (known.dead) {
    const unmounted = unmountThenRemove();
    const [removed, unmountDone] = await Promise.allSettled([
      phases.time("runc_delete", () => host.runtime.remove(id)),
      unmounted,
    ]);
    if (removed.status === "rejected") {
      // Deletion failed: try once more, as gc would, before giving up.
      await phases.time("runc_delete_retry", () => host.runtime.remove(id));
    }
    if (unmountDone.status === "rejected") throw unmountDone.reason;
  } else {
    // It may still run: runc delete --force kills it, and only then does the layer go.
    // Its I/O throttles go first, or a process blocked in throttled I/O outlives the kill
    // (and holds the delete up) until its queued I/O has trickled out.
    new CgroupReader(`/${cgroupNameFor(host.tag, id)}`).liftIoThrottles();
    await phases.time("runc_delete", () => host.runtime.remove(id));
    await unmountThenRemove();
  }
  // runc removes the cgroups it made; what is left (a crash, a failed delete) goes here.
  await phases.time("cgroups", async () => {
    for (const dir of await cgroupDirsNamed(cgroupNameFor(host.tag, id))) {
      await removeCgroupDir(dir);
    }
  });
}

export async function readOwner(host: Host, id: string): Promise<Record<string, unknown> | null> {
  try {
    return JSON.parse(await readFile(path.join(sandboxPaths(host, id).dir, "owner.json"), "utf8"));
  } catch {
    return null;
  }
}
