/**
 * Sessions: live executions against a raw Jupyter kernel, warm hand-outs, density and
 * throughput.
 *
 * - `python_print_live`: `print(1)` on a live Python context through the library (host →
 *   supervisor → kernel → host), with 2,000 files in the writable layer; against
 *   `jupyter_print_raw`: a jupyter_client BlockingKernelClient inside the same sandbox
 *   timing `execute("print(1)")` until the kernel is idle again (ZMQ on loopback, measured
 *   in the sandbox, so none of Corral's path is in it). Interleaved, 20 warm-ups.
 * - `shell_true_live`: `true` in a live shell context.
 * - `create_warm`, `create_to_first_result_warm`: a hand-out from the warm pool, and a
 *   hand-out followed by the first `print(1)` result; baseline `runc_run_true`.
 * - `idle_host_mib_per_sandbox`: the drop of the host's MemAvailable over 100 idle
 *   sandboxes (no kernel started, outside the pool), per sandbox.
 * - `execs_per_second`: 16 callers on 16 live sandboxes for 30 s, `print(1)` each in a
 *   loop; against `jupyter_execs_per_second_raw`: 16 raw kernels driven by 16 client
 *   threads the same way, inside one sandbox with the same total CPU.
 */
import { readdirSync, readFileSync } from "node:fs";
import { DEFAULT_LIMITS, GiB } from "../../src/core/limits.js";
import { Session } from "../../src/sandbox/session.js";
import { WarmPool } from "../../src/sandbox/warm-pool.js";
import type { Figure } from "../lib/figures.js";
import type { Bench, BenchContext } from "../lib/registry.js";

/** The raw baseline's one execution: execute, then wait for idle and the reply. */
const JUPYTER_EXECUTE = `
def execute(kc, code, timeout):
    msg_id = kc.execute(code)
    while True:
        m = kc.get_iopub_msg(timeout=timeout)
        if (m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "status"
                and m["content"]["execution_state"] == "idle"):
            break
    kc.get_shell_msg(timeout=timeout)
`;

const JUPYTER_SETUP = `
import time, jupyter_client
km, kc = jupyter_client.manager.start_new_kernel(kernel_name="python3")
${JUPYTER_EXECUTE}
def sample():
    t = time.perf_counter()
    execute(kc, "print(1)", 10)
    return (time.perf_counter() - t) * 1000
for _ in range(20): sample()
`;

async function session(ctx: BenchContext, limits = {}): Promise<Session> {
  return Session.create(ctx.host, { image: ctx.image, limits: { ...DEFAULT_LIMITS, ...limits } });
}

async function must<T extends { error: unknown }>(p: Promise<T>, what: string): Promise<T> {
  const r = await p;
  if (r.error) throw new Error(`${what}: ${JSON.stringify(r.error)}`);
  return r;
}

export const liveBench: Bench = {
  name: "live",
  summary: "print(1) on a live Python context vs a raw Jupyter kernel; true in a live shell",
  figures: ["python_print_live", "jupyter_print_raw", "shell_true_live"],
  defaultN: 300,
  async run(ctx) {
    const s = await session(ctx);
    try {
      await s.commands.run(
        "mkdir -p /work/many && cd /work/many && for i in $(seq 1 2000); do : > f$i; done",
      );
      const jup = s.createCodeContext();
      await must(s.runCode(JUPYTER_SETUP, { context: jup.id, timeoutMs: 120_000 }), "jupyter");
      for (let i = 0; i < 20; i++) {
        await s.runCode("print(1)");
        await s.runCode("true", { language: "shell" });
      }
      const live: number[] = [];
      const raw: number[] = [];
      const shell: number[] = [];
      for (let i = 0; i < ctx.n; i++) {
        let t = performance.now();
        await s.runCode("print(1)");
        live.push(performance.now() - t);
        const r = await must(s.runCode("sample()", { context: jup.id }), "jupyter sample");
        raw.push(Number(r.results[0]?.data["text/plain"]));
        t = performance.now();
        await s.runCode("true", { language: "shell" });
        shell.push(performance.now() - t);
      }
      return [
        { kind: "timing", name: "python_print_live", samples: live, baseline: "jupyter_print_raw" },
        { kind: "timing", name: "jupyter_print_raw", samples: raw, baseline: null },
        { kind: "timing", name: "shell_true_live", samples: shell, baseline: null },
      ];
    } finally {
      await s.destroy();
    }
  },
};

export const warmBench: Bench = {
  name: "warm",
  summary: "hand-out from the warm pool, and hand-out to the first print(1) result",
  figures: ["create_warm", "create_to_first_result_warm"],
  defaultN: 30,
  async run(ctx) {
    const pool = new WarmPool(ctx.host, {
      image: ctx.image,
      limits: { ...DEFAULT_LIMITS },
      size: 2,
    });
    const warm: number[] = [];
    const first: number[] = [];
    try {
      for (let i = 0; i < ctx.n; i++) {
        // Measure hand-outs from a full pool: refilling is the pool's background work.
        await pool.whenFull();
        let t = performance.now();
        const a = await pool.take();
        warm.push(performance.now() - t);
        t = performance.now();
        const b = await pool.take();
        await b.runCode("print(1)");
        first.push(performance.now() - t);
        await Promise.all([a.destroy(), b.destroy()]);
        if (i % 10 === 9) ctx.log(`warm: ${i + 1}/${ctx.n}`);
      }
    } finally {
      await pool.close();
    }
    return [
      { kind: "timing", name: "create_warm", samples: warm, baseline: "runc_run_true" },
      {
        kind: "timing",
        name: "create_to_first_result_warm",
        samples: first,
        baseline: "runc_run_true",
      },
    ];
  },
};

function memAvailableKiB(): number {
  const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync("/proc/meminfo", "utf8"));
  return Number(m?.[1] ?? Number.NaN);
}

async function settle(): Promise<void> {
  await new Promise((r) => setTimeout(r, 2000));
}

export const densityBench: Bench = {
  name: "density",
  summary: "host memory per idle sandbox (no kernel started, outside the pool)",
  figures: ["idle_host_mib_per_sandbox", "idle_sandbox_charged_mib"],
  defaultN: 100,
  async run(ctx) {
    await settle();
    const before = memAvailableKiB();
    const sessions: Session[] = [];
    try {
      for (let i = 0; i < ctx.n; i++) {
        sessions.push(await session(ctx));
        if (i % 25 === 24) ctx.log(`density: ${i + 1}/${ctx.n} sandboxes`);
      }
      await settle();
      const after = memAvailableKiB();
      const perMiB = (before - after) / 1024 / ctx.n;
      // What each sandbox is charged, counted directly (other processes on a shared
      // machine move MemAvailable too): its cgroup (processes, page cache and kernel
      // memory charged to it) plus its shim on the host, outside that cgroup.
      const charged = sessions.map((s) => chargedKiB(s) / 1024);
      const mean = charged.reduce((a, b) => a + b, 0) / charged.length;
      ctx.log(`density: host processes per sandbox: ${describeProcesses(sessions[0]!)}`);
      ctx.log(
        "density: besides, per sandbox: a loop device and an ext4 mount of its writable layer, an overlay mount, a /dev/shm tmpfs and its cgroups (kernel memory, counted in MemAvailable)",
      );
      return [
        {
          kind: "value",
          name: "idle_host_mib_per_sandbox",
          n: ctx.n,
          value: perMiB,
          unit: "MiB",
          baseline: null,
          baselineValue: null,
          better: "lower",
        },
        {
          kind: "value",
          name: "idle_sandbox_charged_mib",
          n: ctx.n,
          value: mean,
          unit: "MiB",
          baseline: null,
          baselineValue: null,
          better: "lower",
        },
      ];
    } finally {
      for (const s of sessions) await s.destroy().catch(() => undefined);
    }
  },
};

function readNumber(file: string): number {
  try {
    return Number(readFileSync(file, "utf8").trim());
  } catch {
    return 0;
  }
}

/** KiB charged to one sandbox: its memory cgroup's usage plus its shim's RSS. */
function chargedKiB(s: Session): number {
  const cg = s.sandbox.cgroup;
  const usage =
    cg.version === 2
      ? readNumber(`/sys/fs/cgroup${cg.cgroupsPath}/memory.current`)
      : readNumber(`/sys/fs/cgroup/memory${cg.cgroupsPath}/memory.usage_in_bytes`);
  return usage / 1024 + (sandboxProcesses(s).shim?.rssKiB ?? 0);
}

interface HostProcess {
  pid: number;
  ppid: number;
  name: string;
  rssKiB: number;
  inSandbox: boolean;
}

function hostProcess(pid: number, cgroupsPath: string): HostProcess | null {
  try {
    const st = readFileSync(`/proc/${pid}/status`, "utf8");
    return {
      pid,
      ppid: Number(/^PPid:\s+(\d+)/m.exec(st)?.[1]),
      name: /^Name:\s+(.*)$/m.exec(st)?.[1] ?? "?",
      rssKiB: Number(/^VmRSS:\s+(\d+) kB/m.exec(st)?.[1] ?? 0),
      inSandbox: readFileSync(`/proc/${pid}/cgroup`, "utf8").includes(cgroupsPath),
    };
  } catch {
    return null; // gone
  }
}

/**
 * The host processes one sandbox costs: those in its cgroup, and its shim (the process
 * outside the cgroup whose child is the container's init).
 */
function sandboxProcesses(s: Session): { inside: HostProcess[]; shim: HostProcess | null } {
  const cgroupsPath = s.sandbox.cgroup.cgroupsPath;
  const inside = readdirSafe("/proc")
    .map((pid) => hostProcess(Number(pid), cgroupsPath))
    .filter((p): p is HostProcess => p?.inSandbox === true);
  const parents = inside.map((p) => hostProcess(p.ppid, cgroupsPath));
  const shim = parents.find((p): p is HostProcess => p !== null && !p.inSandbox) ?? null;
  return { inside, shim };
}

function describeProcesses(s: Session): string {
  const { inside, shim } = sandboxProcesses(s);
  const procs = inside.map((p) => `${p.name} in the sandbox (${p.rssKiB} KiB RSS)`);
  if (shim) procs.push(`its shim on the host (pid ${shim.pid}, ${shim.rssKiB} KiB RSS)`);
  return procs.join(", ") || "none found";
}

const CALLERS = 16;

export const throughputBench: Bench = {
  name: "throughput",
  summary: "print(1) per second: 16 callers on 16 live sandboxes vs 16 raw Jupyter kernels",
  figures: ["execs_per_second", "jupyter_execs_per_second_raw"],
  defaultN: 30,
  async run(ctx) {
    const seconds = ctx.n;
    // Raw: 16 kernels and 16 client threads in one sandbox that may use both cores.
    const jup = await session(ctx, { cpus: 2, memoryBytes: 6 * GiB, pids: 4096 });
    let rawRate: number;
    try {
      const r = await must(
        jup.runCode(
          `
import threading, time, jupyter_client
kernels = [jupyter_client.manager.start_new_kernel(kernel_name="python3") for _ in range(${CALLERS})]
counts = [0] * ${CALLERS}
${JUPYTER_EXECUTE}
def drive(i, kc, until):
    while time.monotonic() < until:
        execute(kc, "print(1)", 30)
        counts[i] += 1
until = time.monotonic() + ${seconds}
threads = [threading.Thread(target=drive, args=(i, kc, until)) for i, (km, kc) in enumerate(kernels)]
t0 = time.monotonic()
[t.start() for t in threads]; [t.join() for t in threads]
rate = sum(counts) / (time.monotonic() - t0)
for km, kc in kernels: kc.stop_channels(); km.shutdown_kernel(now=True)
rate`,
          { timeoutMs: (seconds + 240) * 1000 },
        ),
        "raw jupyter throughput",
      );
      rawRate = Number(r.results[0]?.data["text/plain"]);
    } finally {
      await jup.destroy();
    }
    const sessions: Session[] = [];
    let count = 0;
    let elapsed = 0;
    try {
      for (let i = 0; i < CALLERS; i++) {
        const s = await session(ctx);
        await s.prestart("python");
        sessions.push(s);
      }
      const until = performance.now() + seconds * 1000;
      const t0 = performance.now();
      await Promise.all(
        sessions.map(async (s) => {
          while (performance.now() < until) {
            await s.runCode("print(1)");
            count++;
          }
        }),
      );
      elapsed = (performance.now() - t0) / 1000;
    } finally {
      for (const s of sessions) await s.destroy().catch(() => undefined);
    }
    const figures: Figure[] = [
      {
        kind: "value",
        name: "execs_per_second",
        n: count,
        value: count / elapsed,
        unit: "execs/s",
        baseline: "jupyter_execs_per_second_raw",
        baselineValue: rawRate,
        better: "higher",
      },
      {
        kind: "value",
        name: "jupyter_execs_per_second_raw",
        n: CALLERS,
        value: rawRate,
        unit: "execs/s",
        baseline: null,
        baselineValue: null,
        better: "higher",
      },
    ];
    return figures;
  },
};

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir).filter((d) => /^\d+$/.test(d));
  } catch {
    return [];
  }
}
