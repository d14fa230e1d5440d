/**
 * Sessions on real sandboxes: stateful Python and shell contexts, streaming, timeouts that
 * keep the state, kernels that die and come back, contexts isolated from each other, and
 * the session's own lifetime (idle TTL, hard deadline, destroy). Also the `lifecycle` and
 * `encoding` groups of the hostile cases as they apply to sessions.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CorralError } from "../../src/core/errors.js";
import { DEFAULT_LIMITS, type Limits, MiB } from "../../src/core/limits.js";
import type { ExecEvent } from "../../src/sandbox/context.js";
import { Session, type SessionOptions } from "../../src/sandbox/session.js";
import { type TestEnv, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
const open: Session[] = [];

async function session(
  limits: Partial<Limits> = {},
  opts: Partial<SessionOptions> = {},
): Promise<Session> {
  const s = await Session.create(env.host, {
    image: env.image,
    limits: { ...DEFAULT_LIMITS, ...limits },
    ...opts,
  });
  open.push(s);
  return s;
}

beforeAll(async () => {
  env = await testEnv("session");
});
afterAll(async () => {
  await Promise.all(open.map((s) => s.destroy()));
  env?.close();
});

describe("python context", () => {
  let s: Session;
  beforeAll(async () => {
    s = await session();
  });

  it("keeps globals, returns the last expression, counts executions", async () => {
    const a = await s.runCode("x = 41\nx");
    expect(a.error).toBeNull();
    expect(a.results).toEqual([
      { kind: "result", data: { "text/plain": "41" }, metadata: {}, isMainResult: true },
    ]);
    const b = await s.runCode("print(x + 1)");
    expect(b.stdout.text).toBe("42\n");
    expect(b.results).toEqual([]);
    expect(b.executionCount).toBe((a.executionCount ?? 0) + 1);
  });

  it("returns errors as {ename, evalue, traceback}", async () => {
    const r = await s.runCode("def f():\n    return 1/0\nf()");
    expect(r.error?.ename).toBe("ZeroDivisionError");
    expect(r.error?.evalue).toBe("division by zero");
    expect(r.error?.traceback.join("\n")).toMatch(/return 1\/0/);
    expect(r.stateLost).toBe(false);
    // A syntax error is an error too, and the kernel lives on.
    const syn = await s.runCode("def (:");
    expect(syn.error?.ename).toBe("SyntaxError");
    expect((await s.runCode("x")).results[0]?.data["text/plain"]).toBe("41");
  });

  it("streams print output while the call runs, then ends", async () => {
    const events: { type: string; at: number; text?: string }[] = [];
    const t0 = performance.now();
    const r = await s.runCode(
      "import time, sys\nprint('a', flush=True)\ntime.sleep(1)\nprint('b', file=sys.stderr)\n7",
      {
        onEvent: (e: ExecEvent) =>
          events.push({
            type: e.type,
            at: performance.now() - t0,
            ...("text" in e ? { text: e.text } : {}),
          }),
      },
    );
    expect(r.stdout.text).toBe("a\n");
    expect(r.stderr.text).toBe("b\n");
    // A stream may come in several chunks; the order of the kinds is what counts.
    const kinds = events.map((e) => e.type).filter((t, i, all) => i === 0 || all[i - 1] !== t);
    expect(kinds).toEqual(["stdout", "stderr", "result", "end"]);
    // "a" arrived a second before the call ended: it was streamed, not buffered.
    expect(events[0]!.at).toBeLessThan(events.at(-1)!.at - 700);
  });

  it("has IPython's semantics: !cmd, display(), %matplotlib inline", async () => {
    const bang = await s.runCode("!echo from-shell; pwd");
    expect(bang.stdout.text).toBe("from-shell\n/work\n");
    const html = await s.runCode(
      "from IPython.display import display, HTML\ndisplay(HTML('<b>hi</b>'))",
    );
    expect(html.results).toHaveLength(1);
    expect(html.results[0]).toMatchObject({ kind: "display", isMainResult: false });
    expect(html.results[0]!.data["text/html"]).toBe("<b>hi</b>");
    const png = await s.runCode(
      "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
    );
    expect(png.error).toBeNull();
    const image = png.results.find((r) => typeof r.data["image/png"] === "string");
    expect(image).toBeDefined();
    const bytes = Buffer.from(image!.data["image/png"] as string, "base64");
    expect(bytes.subarray(1, 4).toString()).toBe("PNG");
  });

  it("a module written during the session imports in the live kernel", async () => {
    const miss = await s.runCode(
      "import sys, os\nos.makedirs('/work/lib', exist_ok=True)\nsys.path.insert(0, '/work/lib')\nimport corral_new_mod",
    );
    expect(miss.error?.ename).toBe("ModuleNotFoundError");
    const w = await s.commands.run("echo 'V = 5' > /work/lib/corral_new_mod.py");
    expect(w.exitCode).toBe(0);
    const hit = await s.runCode("import corral_new_mod\ncorral_new_mod.V");
    expect(hit.error).toBeNull();
    expect(hit.results[0]?.data["text/plain"]).toBe("5");
  });

  it("per-call envs hold for that call only; session envs for all", async () => {
    const a = await s.runCode("import os\nrepr(os.environ.get('CALL_ONLY'))", {
      envs: { CALL_ONLY: "yes" },
    });
    expect(a.results[0]?.data["text/plain"]).toBe(`"'yes'"`);
    const b = await s.runCode("repr(os.environ.get('CALL_ONLY'))");
    expect(b.results[0]?.data["text/plain"]).toBe("'None'");
  });

  it("state-survives-timeout: x = 41, a timed-out loop, then print(x + 1) gives 42 at once", async () => {
    await s.runCode("x = 41");
    const t0 = performance.now();
    const loop = await s.runCode("while True: pass", { timeoutMs: 1000 });
    const took = performance.now() - t0;
    expect(loop.killed).toBe("timeout");
    expect(loop.stateLost).toBe(false);
    expect(took).toBeGreaterThanOrEqual(990);
    expect(took).toBeLessThan(2500);
    const t1 = performance.now();
    const next = await s.runCode("print(x + 1)");
    expect(next.stdout.text).toBe("42\n");
    expect(performance.now() - t1).toBeLessThan(500);
  });

  it("timeout-precision: time.sleep(10) with a 3 s timeout returns within 3 to 4 s", async () => {
    const t0 = performance.now();
    const r = await s.runCode("import time; time.sleep(10)", { timeoutMs: 3000 });
    const took = performance.now() - t0;
    expect(r.killed).toBe("timeout");
    expect(took).toBeGreaterThanOrEqual(2990);
    expect(took).toBeLessThan(4000);
  });

  it("orphan-child-at-timeout: the call's children are swept, the kernel stays", async () => {
    await s.runCode("keep = 'me'");
    const t0 = performance.now();
    const r = await s.runCode(
      "import subprocess, time\nsubprocess.Popen(['sleep', '600'])\ntime.sleep(600)",
      { timeoutMs: 2000 },
    );
    expect(r.killed).toBe("timeout");
    expect(performance.now() - t0).toBeLessThan(3500);
    // Live processes only: the killed sleep stays a zombie until Python's Popen reaps it.
    const ps = await s.commands.run(
      "ps -eo stat=,comm= | awk '$2 == \"sleep\" && $1 !~ /^Z/' | wc -l",
    );
    expect(ps.stdout.text.trim()).toBe("0");
    expect((await s.runCode("keep")).results[0]?.data["text/plain"]).toBe("'me'");
  });

  it("kernel-dies: the caller is told the state was lost; a fresh kernel serves the next call", async () => {
    await s.runCode("y = 1");
    const r = await s.runCode("import os; os.kill(os.getpid(), 9)");
    expect(r.stateLost).toBe(true);
    expect(r.error?.ename).toBe("KernelDied");
    expect(r.error?.evalue).toMatch(/died.*SIGKILL.*state was lost/);
    const next = await s.runCode("print(1)\n'y' in globals()");
    expect(next.stdout.text).toBe("1\n");
    expect(next.results[0]?.data["text/plain"]).toBe("False");
    expect(next.executionCount).toBe(1);
  });
});

describe("a kernel killed by OOM", () => {
  it("is reported as oom with its state lost; the next call works", async () => {
    const s = await session({ memoryBytes: 256 * MiB });
    await s.runCode("z = 1");
    const r = await s.runCode("b = b'x' * (600 * 1024 * 1024)");
    expect(r.killed).toBe("oom");
    expect(r.stateLost).toBe(true);
    expect(r.error?.evalue).toMatch(/state was lost/);
    const next = await s.runCode("print('z' in globals())");
    expect(next.stdout.text).toBe("False\n");
    await s.destroy();
  });
});

describe("shell context", () => {
  let s: Session;
  beforeAll(async () => {
    s = await session();
  });

  it("keeps the working directory, exported variables and functions", async () => {
    const a = await s.runCode('cd /tmp && export GREETING=hello; f() { echo "f:$1"; }', {
      language: "shell",
    });
    expect(a.exitCode).toBe(0);
    const b = await s.runCode('pwd; echo "$GREETING"; f x; bash -c \'echo "child:$GREETING"\'', {
      language: "shell",
    });
    expect(b.stdout.text).toBe("/tmp\nhello\nf:x\nchild:hello\n");
  });

  it("reports the exact status of the last command", async () => {
    const r = await s.runCode("echo partial; false", { language: "shell" });
    expect(r.stdout.text).toBe("partial\n");
    expect(r.exitCode).toBe(1);
    expect(r.error).toBeNull();
  });

  it("exit-code-fidelity: `exit 7` ends the shell with status 7; the next call gets a new one", async () => {
    await s.runCode("export MARK=1", { language: "shell" });
    const r = await s.runCode("echo partial; exit 7", { language: "shell" });
    expect(r.stdout.text).toBe("partial\n");
    expect(r.exitCode).toBe(7);
    expect(r.stateLost).toBe(true);
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell expansion, not a template
    const next = await s.runCode('echo "mark=${MARK:-unset} $(pwd)"', { language: "shell" });
    expect(next.stdout.text).toBe("mark=unset /work\n");
  });

  it("code cannot read the next request nor forge an event", async () => {
    // A program the code starts sees neither fd 3 (requests) nor fd 4 (events), and its
    // stdin is /dev/null, so `cat` cannot swallow the next call.
    const r = await s.runCode(
      "sh -c 'test -e /proc/self/fd/3 && echo three; test -e /proc/self/fd/4 && echo four; true'; cat; echo x",
      { language: "shell" },
    );
    expect(r.stdout.text).toBe("x\n");
    expect((await s.runCode("echo still", { language: "shell" })).stdout.text).toBe("still\n");
  });

  it("self-stop: `kill -STOP $$` times out at about 2 s; the session goes on", async () => {
    const t0 = performance.now();
    const r = await s.runCode("kill -STOP $$", { language: "shell", timeoutMs: 2000 });
    const took = performance.now() - t0;
    expect(r.killed).toBe("timeout");
    expect(r.stateLost).toBe(true);
    expect(took).toBeLessThan(4000);
    expect((await s.runCode("echo back", { language: "shell" })).stdout.text).toBe("back\n");
  });

  it("setsid-daemon: returns at once; the daemon lives until the session is destroyed", async () => {
    const own = await session();
    const t0 = performance.now();
    const r = await own.runCode("setsid nohup sleep 600 >/dev/null 2>&1 & echo started", {
      language: "shell",
    });
    expect(r.stdout.text).toBe("started\n");
    expect(performance.now() - t0).toBeLessThan(1500);
    // (The shell can answer while its child is still nohup, before nohup execs sleep.)
    let ps = await own.commands.run(["pgrep", "-x", "sleep"]);
    const deadline = Date.now() + 5000;
    while (ps.exitCode !== 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      ps = await own.commands.run(["pgrep", "-x", "sleep"]);
    }
    expect(ps.exitCode).toBe(0);
    await own.destroy();
    // The leak check at the end of the run proves no process is left on the host.
  });
});

describe("commands", () => {
  let s: Session;
  beforeAll(async () => {
    s = await session({}, { envs: { SESSION_VAR: "sv" } });
  });

  it("runs a string with bash and an array without a shell", async () => {
    const a = await s.commands.run("echo $SESSION_VAR; exit 4");
    expect(a.stdout.text).toBe("sv\n");
    expect(a.exitCode).toBe(4);
    const b = await s.commands.run(["printf", "%s|", "a b", "$HOME"]);
    expect(b.stdout.text).toBe("a b|$HOME|");
  });

  it("takes cwd, envs, stdin and a timeout", async () => {
    const r = await s.commands.run("pwd; echo $X; cat", {
      cwd: "/tmp",
      envs: { X: "1" },
      stdin: "from stdin\n",
    });
    expect(r.stdout.text).toBe("/tmp\n1\nfrom stdin\n");
    const t = await s.commands.run("sleep 30", { timeoutMs: 500 });
    expect(t.killed).toBe("timeout");
  });

  it("session envs reach the kernels too", async () => {
    const r = await s.runCode("import os\nos.environ['SESSION_VAR']");
    expect(r.results[0]?.data["text/plain"]).toBe("'sv'");
  });
});

describe("contexts", () => {
  it("context-isolation: 12 create/remove cycles never see each other's globals", async () => {
    const s = await session();
    for (let i = 0; i < 12; i++) {
      const ctx = s.createCodeContext({ language: "python" });
      const r = await s.runCode('print("x" in globals()); x = 1', { context: ctx.id });
      expect(r.stdout.text).toBe("False\n");
      await s.removeCodeContext(ctx.id);
    }
    expect(s.listCodeContexts()).toEqual([]);
    const ps = await s.commands.run("pgrep -c -f '[/].corral/kernels/python' || true");
    expect(ps.stdout.text.trim()).toBe("0");
    await s.destroy();
  });

  it("lists, restarts and removes contexts; a removed context refuses calls", async () => {
    const s = await session();
    const a = s.createCodeContext({ language: "python" });
    const b = s.createCodeContext({ language: "shell", cwd: "/tmp" });
    expect(s.listCodeContexts().map((c) => c.id)).toEqual([a.id, b.id]);
    await s.runCode("v = 3", { context: a.id });
    await s.restartCodeContext(a.id);
    const after = await s.runCode("'v' in globals()", { context: a.id });
    expect(after.results[0]?.data["text/plain"]).toBe("False");
    expect((await s.runCode("pwd", { context: b.id })).stdout.text).toBe("/tmp\n");
    await expect(s.runCode("pwd", { context: b.id, language: "python" })).rejects.toThrow(
      /runs shell, not python/,
    );
    await s.removeCodeContext(b.id);
    await expect(s.runCode("pwd", { context: b.id })).rejects.toThrow(/no context/);
    await s.destroy();
  });

  it("same-context-concurrency: two calls on one context are serialized, on two contexts parallel", async () => {
    const s = await session({ cpus: 2 });
    const a = s.createCodeContext();
    const b = s.createCodeContext();
    // Warm both kernels so that the timing is of the calls, not of IPython's import.
    await Promise.all([s.runCode("1", { context: a.id }), s.runCode("1", { context: b.id })]);
    const code = "import time\nprint('start', flush=True)\ntime.sleep(2)\nprint('end')";
    let t0 = performance.now();
    const same = await Promise.all([
      s.runCode(code, { context: a.id }),
      s.runCode(code, { context: a.id }),
    ]);
    const serial = performance.now() - t0;
    expect(serial).toBeGreaterThanOrEqual(3900);
    expect(serial).toBeLessThan(5500);
    for (const r of same) expect(r.stdout.text).toBe("start\nend\n");
    t0 = performance.now();
    await Promise.all([s.runCode(code, { context: a.id }), s.runCode(code, { context: b.id })]);
    const parallel = performance.now() - t0;
    expect(parallel).toBeGreaterThanOrEqual(1950);
    expect(parallel).toBeLessThan(3200);
    await s.destroy();
  });
});

describe("encoding (hostile cases, in a session)", () => {
  let s: Session;
  beforeAll(async () => {
    s = await session({ outputCapBytes: 4 * MiB });
  });

  it("utf8-split-across-chunks: byte-identical output, no U+FFFD, in chunks and in the result", async () => {
    const chunks: string[] = [];
    const r = await s.runCode('import sys\nsys.stdout.write("é€😀" * 200000); sys.stdout.flush()', {
      onStdout: (c) => chunks.push(c.text),
    });
    const want = "é€😀".repeat(200000);
    expect(r.stdout.truncated).toBe(false);
    expect(r.stdout.text === want).toBe(true);
    expect(chunks.length).toBeGreaterThan(1);
    expect(chunks.join("") === want).toBe(true);
    expect(chunks.some((c) => c.includes("\uFFFD"))).toBe(false);
  });

  it("invalid-bytes: replacement characters plus the raw bytes as base64", async () => {
    const r = await s.runCode('import sys\nsys.stdout.buffer.write(b"ok\\xff\\xfe\\n")');
    expect(r.stdout.text).toBe("ok\uFFFD\uFFFD\n");
    expect(Buffer.from(r.stdout.base64 ?? "", "base64")).toEqual(
      Buffer.from([0x6f, 0x6b, 0xff, 0xfe, 0x0a]),
    );
  });

  it("the output cap applies while streaming, with the full byte count", async () => {
    const small = await session({ outputCapBytes: 1000 });
    let streamed = 0;
    const r = await small.runCode("print('y' * 5000)", {
      onStdout: (c) => {
        streamed += Buffer.byteLength(c.text);
      },
    });
    expect(r.stdout.truncated).toBe(true);
    expect(r.stdout.bytes).toBe(5001);
    expect(r.stdout.text.length).toBe(1000);
    expect(streamed).toBe(1000);
    await small.destroy();
  });
});

describe("session lifetime", () => {
  it("a workdir that does not exist fails the create with a clear message", async () => {
    const err = await Session.create(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
      workdir: "/no/such/dir",
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CorralError);
    expect((err as Error).message).toMatch(/workdir \/no\/such\/dir does not exist/);
  });

  it("the idle TTL ends an idle session but not one that is busy", async () => {
    const s = await session({}, { idleTtlMs: 1000 });
    const r = await s.runCode("sleep 2.5; echo done", { language: "shell" });
    expect(r.stdout.text).toBe("done\n");
    expect(s.endReason).toBeNull();
    await new Promise((res) => setTimeout(res, 1800));
    expect(s.endReason).toBe("idle");
    await expect(s.runCode("1")).rejects.toThrow(/has ended \(idle\)/);
  });

  it("timeoutMs is a hard deadline; setTimeout moves it", async () => {
    const s = await session({}, { timeoutMs: 60_000 });
    expect(s.deadlineAt!.getTime()).toBeGreaterThan(Date.now() + 50_000);
    s.setTimeout(800);
    const r = await s.runCode("sleep 5; echo never", { language: "shell", timeoutMs: 10_000 });
    expect(r.stdout.text).toBe("");
    expect(s.endReason).toBe("timeout");
    // The call says what ended it: the session's deadline, not a failure of its own.
    expect(r.error?.evalue).toMatch(/session reached its timeout \(timeoutMs\)/);
    await expect(s.commands.run("true")).rejects.toThrow(/has ended \(timeout\)/);
  });

  it("refuses bad input with one-line errors", async () => {
    const s = await session();
    await expect(s.runCode("1", { language: "cobol" })).rejects.toThrow(CorralError);
    await expect(s.runCode("1", { timeoutMs: -1 })).rejects.toThrow(/positive/);
    await expect(s.runCode("1", { envs: { "BAD-NAME": "x" } })).rejects.toThrow(
      /invalid environment/,
    );
    await expect(s.commands.run([])).rejects.toThrow(/non-empty array/);
    expect(() => s.createCodeContext({ cwd: "relative" })).toThrow(/absolute/);
    await s.destroy();
    await expect(s.runCode("1")).rejects.toThrow(/has ended \(destroyed\)/);
  });
});

describe("background commands", () => {
  it("a background HTTP server answers a request made from a context; list, connect, kill", async () => {
    const s = await session();
    const seen: string[] = [];
    const srv = await s.commands.run("exec python3 -u -m http.server 8123 --bind 127.0.0.1", {
      background: true,
      timeoutMs: 0,
      onStdout: (c) => seen.push(c.text),
    });
    expect(srv.pid).toBeGreaterThan(1);
    expect(s.commands.list().map((c) => c.pid)).toContain(srv.pid);
    const r = await s.runCode(
      [
        "import urllib.request, time",
        "for _ in range(100):",
        "    try:",
        "        body = urllib.request.urlopen('http://127.0.0.1:8123/').read(); break",
        "    except OSError: time.sleep(0.05)",
        "b'Directory listing' in body",
      ].join("\n"),
    );
    expect(r.error).toBeNull();
    expect(r.results[0]?.data["text/plain"]).toBe("True");
    // Re-attach: the output so far is replayed, later output streams to the new listener.
    const replayed: string[] = [];
    const again = s.commands.connect(srv.pid, { onStdout: (c) => replayed.push(c.text) });
    expect(replayed.join("")).toMatch(/Serving HTTP on 127\.0\.0\.1 port 8123/);
    expect(again.stdout).toBe(seen.join(""));
    expect(await srv.kill(15)).toBe(true);
    const res = await srv.wait();
    expect(res.exitCode).toBe(128 + 15);
    expect(res.killed).toBeNull();
    expect(s.commands.list()).toEqual([]);
    expect(await srv.kill()).toBe(false);
    expect(await s.commands.kill(srv.pid)).toBe(false);
    expect(() => s.commands.connect(srv.pid)).toThrow(/no running command/);
    // SIGKILL (the default) returns once the command is gone: list() agrees at once.
    const sleeper = await s.commands.run("sleep 300", { background: true });
    expect(await s.commands.kill(sleeper.pid)).toBe(true);
    expect(s.commands.list()).toEqual([]);
    expect(await sleeper.kill()).toBe(false);
    await s.destroy();
  });

  it("sendStdin and closeStdin reach a background program", async () => {
    const s = await session();
    const cat = await s.commands.run(["cat"], { background: true, stdin: true });
    cat.sendStdin("hello ");
    s.commands.sendStdin(cat.pid, "world\n");
    cat.closeStdin();
    const r = await cat.wait();
    expect(r.stdout.text).toBe("hello world\n");
    expect(r.exitCode).toBe(0);
    expect(() => cat.sendStdin("late")).toThrow(/has exited/);
    await s.destroy();
  });

  it("a background command keeps the session from idling out; it times out like any other", async () => {
    const s = await session({}, { idleTtlMs: 800 });
    const bg = await s.commands.run("sleep 2; echo slept", { background: true });
    await new Promise((res) => setTimeout(res, 1300));
    expect(s.endReason).toBeNull();
    expect((await bg.wait()).stdout.text).toBe("slept\n");
    const short = await s.commands.run("sleep 30", { background: true, timeoutMs: 300 });
    expect((await short.wait()).killed).toBe("timeout");
    await new Promise((res) => setTimeout(res, 1300));
    expect(s.endReason).toBe("idle");
  });

  it("a program that cannot start is an error, not a handle", async () => {
    const s = await session();
    await expect(s.commands.run(["/no/such/program"], { background: true })).rejects.toThrow(
      /no\/such\/program/,
    );
    expect(s.commands.list()).toEqual([]);
    await s.destroy();
  });

  it("every command result carries its wall time, CPU time and peak memory", async () => {
    const s = await session();
    const r = await s.commands.run(
      'python3 -c "b = bytearray(64 * 1024 * 1024); [0 for _ in range(2_000_000)]"',
    );
    expect(r.exitCode).toBe(0);
    expect(r.durationMs).toBeGreaterThan(0);
    expect(r.cpuMs).toBeGreaterThan(20);
    expect(r.peakMemoryBytes).toBeGreaterThan(64 * MiB);
    const c = await s.runCode("b = bytearray(96 * 1024 * 1024)\nsum(range(3_000_000))");
    expect(c.durationMs).toBeGreaterThan(0);
    expect(c.cpuMs).toBeGreaterThan(10);
    expect(c.peakMemoryBytes).toBeGreaterThan(96 * MiB);
    // The next call's peak is its own (cgroup v1 resets the window; v2 keeps the high).
    await s.runCode("del b\nimport gc; gc.collect()");
    const d = await s.runCode("1");
    if (s.sandbox.cgroup.version === 1) expect(d.peakMemoryBytes).toBeLessThan(96 * MiB);
    await s.destroy();
  });
});

describe("file changes (per window, not per call)", () => {
  it("a call's changes on demand: created, modified, deleted, image files deleted", async () => {
    const s = await session();
    const a = await s.runCode("open('/work/a.txt', 'w').write('one')\n1");
    const wa = await s.fileChanges(a.id);
    expect(wa?.executions).toContain(a.id);
    expect(wa?.changes).toContainEqual({
      path: "/work/a.txt",
      change: "created",
      type: "file",
      size: 3,
    });
    const b = await s.commands.run("echo more >> /work/a.txt; rm /etc/debian_version");
    const wb = await s.fileChanges(b.id);
    expect(wb?.executions).toEqual([b.id]);
    expect(wb?.changes).toEqual(
      expect.arrayContaining([
        { path: "/work/a.txt", change: "modified", type: "file", size: 8 },
        { path: "/etc/debian_version", change: "deleted", type: "file", size: 0 },
      ]),
    );
    const c = await s.commands.run("rm /work/a.txt");
    expect((await s.fileChanges(c.id))?.changes).toContainEqual({
      path: "/work/a.txt",
      change: "deleted",
      type: "file",
      size: 0,
    });
    expect(await s.fileChanges("exec-unknown")).toBeNull();
    await s.destroy();
  });

  it("the layer is walked by itself after 1 s idle and at destroy; events name the window", async () => {
    const windows: string[][] = [];
    const s = await session(
      {},
      { onFileChanges: (w) => windows.push(w.changes.map((c) => c.path)) },
    );
    const id = s.id;
    const r1 = await s.commands.run("touch /work/one");
    const r2 = await s.commands.run("touch /work/two");
    await new Promise((res) => setTimeout(res, 1500));
    const walked = env.host.events.list({ sandbox: id }).filter((e) => e.kind === "files.changed");
    expect(walked).toHaveLength(1);
    const d = walked[0]!.details as {
      executions: string[];
      attribution: string;
      changes: { path: string }[];
    };
    expect(d.executions).toEqual([r1.id, r2.id]);
    expect(d.attribution).toBe("window");
    expect(d.changes.map((c) => c.path)).toEqual(["/work/one", "/work/two"]);
    const r3 = await s.commands.run("touch /work/three");
    await s.destroy();
    const all = env.host.events.list({ sandbox: id }).filter((e) => e.kind === "files.changed");
    expect(all).toHaveLength(2);
    const last = all[1]!.details as {
      executions: string[];
      attribution: string;
      changes: { path: string }[];
    };
    expect(last.executions).toEqual([r3.id]);
    expect(last.attribution).toBe("execution");
    expect(last.changes.map((c) => c.path)).toEqual(["/work/three"]);
    // The caller's callback saw the same windows, as they closed.
    expect(windows).toEqual([["/work/one", "/work/two"], ["/work/three"]]);
  });

  it("the walk is never redirected by a directory swapped for a symlink to /", async () => {
    const s = await session();
    await s.commands.run("mkdir -p /work/x/d && touch /work/x/d/inside && ln -s / /work/x/l");
    const swapper = await s.commands.run(
      "while :; do mv -T /work/x/d /work/x/t; mv -T /work/x/l /work/x/d; mv -T /work/x/d /work/x/l; mv -T /work/x/t /work/x/d; done",
      { background: true, timeoutMs: 0 },
    );
    const { snapshotLayer } = await import("../../src/sandbox/layer-walk.js");
    let sawLink = 0;
    for (let i = 0; i < 300; i++) {
      const { snapshot } = await snapshotLayer(s.sandbox.upperPath(""));
      for (const [p, e] of snapshot) {
        if (!p.startsWith("/work/x/")) continue;
        // Whatever the race shows, only the sandbox's own three names and "inside" appear.
        expect([
          "/work/x/d",
          "/work/x/l",
          "/work/x/t",
          "/work/x/d/inside",
          "/work/x/l/inside",
          "/work/x/t/inside",
        ]).toContain(p);
        if (e.type === "symlink") sawLink++;
      }
    }
    expect(sawLink).toBeGreaterThan(0);
    await swapper.kill();
    await s.destroy();
  });
});

describe("packages inside a session", () => {
  it("a wheel pip-installed in a session imports in the live kernel, and only in that session", async () => {
    const { makeWheel } = await import("../helpers/wheel.js");
    const wheel = makeWheel("corral_demo_pkg", "1.0", "VALUE = 42\n");
    const s = await session();
    const other = await session();
    // The kernel is live (and has looked for the module) before the install.
    const before = await s.runCode(
      "import importlib.util\nimportlib.util.find_spec('corral_demo_pkg') is None",
    );
    expect(before.results[0]?.data["text/plain"]).toBe("True");
    await s.files.write(`/work/${wheel.file}`, wheel.data);
    const pip = await s.runCode(`%pip install --no-index --no-deps /work/${wheel.file}`, {
      timeoutMs: 120_000,
    });
    expect(pip.stdout.text).toMatch(/Successfully installed corral.demo.pkg-1\.0/);
    const use = await s.runCode("import corral_demo_pkg\ncorral_demo_pkg.VALUE");
    expect(use.error).toBeNull();
    expect(use.results[0]?.data["text/plain"]).toBe("42");
    // The install went into this session's writable layer: not the image, not a neighbour.
    const where = await s.runCode("corral_demo_pkg.__file__");
    expect(where.results[0]?.data["text/plain"]).toMatch(
      /^'\/opt\/venv\/lib\/python3[.\d]*\/site-packages\/corral_demo_pkg/,
    );
    const elsewhere = await other.runCode("import corral_demo_pkg");
    expect(elsewhere.error?.ename).toBe("ModuleNotFoundError");
    const { readdirSync } = await import("node:fs");
    const lib = `${env.image.rootfs}/opt/venv/lib`;
    for (const py of readdirSync(lib)) {
      expect(readdirSync(`${lib}/${py}/site-packages`)).not.toContain("corral_demo_pkg");
    }
    await Promise.all([s.destroy(), other.destroy()]);
  });
});

describe("pip with no network", () => {
  it("a package from an index fails at once, not after pip's 8 s of retries", async () => {
    const s = await session();
    const t = performance.now();
    const r = await s.runCode("%pip install corral-no-such-package", { timeoutMs: 60_000 });
    expect(`${r.stdout.text}${r.stderr.text}`).toMatch(/No matching distribution/);
    expect(performance.now() - t).toBeLessThan(5000);
    await s.destroy();
  });
});

describe("the kernels' own pipes", () => {
  it("a program started by Python code inherits neither the request nor the event pipe", async () => {
    const s = await session();
    const r = await s.runCode(
      "import os\nos.system('test -e /proc/self/fd/3 && echo three; test -e /proc/self/fd/4 && echo four; echo done')",
    );
    expect(r.stdout.text).toBe("done\n");
    const bang = await s.runCode("!ls /proc/self/fd | tr '\\n' ' '");
    expect(bang.stdout.text.trim()).toBe("0 1 2 3");
    await s.destroy();
  });
});

describe("option names", () => {
  it("`timeout` is an alias of `timeoutMs` for calls and commands", async () => {
    const s = await session();
    const r = await s.runCode("import time; time.sleep(5)", { timeout: 500 });
    expect(r.killed).toBe("timeout");
    const c = await s.commands.run("sleep 5", { timeout: 300 });
    expect(c.killed).toBe("timeout");
    await expect(s.runCode("1", { timeout: 1000, timeoutMs: 2000 })).rejects.toThrow(/not both/);
    await s.destroy();
  });
});

describe("hostile kernel output (the kernel is the user's own process)", () => {
  it("a forged, deeply nested event frame is dropped; the host and the session go on", async () => {
    const s = await session();
    const r = await s.runCode(
      [
        "import os, struct",
        `b = ('{"type":"error","ename":' + '[' * 200000 + ']' * 200000 + ',"evalue":"","traceback":[]}').encode()`,
        "os.write(4, struct.pack('>IB', len(b), 1) + b)",
        "print('still here')",
      ].join("\n"),
    );
    expect(r.stdout.text).toBe("still here\n");
    expect(r.error).toBeNull(); // the frame was dropped whole
    expect((await s.runCode("1 + 1")).results[0]?.data["text/plain"]).toBe("2");
    await s.destroy();
  });

  it("frames of millions of tiny objects are not parsed (they would fill the host's heap)", async () => {
    const s = await session();
    const ctxs = [s.createCodeContext(), s.createCodeContext()];
    const rs = await Promise.all(
      ctxs.map((c) =>
        s.runCode(
          [
            "import os, struct",
            'body = b\'{"type":"display","data":{"x":[\' + b\'{},\' * (5 * 1024 * 1024) + b\'{}]}}\'',
            "for i in range(4): os.write(4, struct.pack('>IB', len(body), 1) + body)",
            "print('done')",
          ].join("\n"),
          { context: c.id, timeoutMs: 120_000 },
        ),
      ),
    );
    for (const r of rs) {
      expect(r.stdout.text).toBe("done\n");
      expect(r.results).toEqual([]);
    }
    expect(process.memoryUsage().heapUsed).toBeLessThan(1024 * MiB);
    await s.destroy();
  });

  it("rich outputs are capped per call, with a marker saying what was dropped", async () => {
    const s = await session({ memoryBytes: 1024 * MiB });
    const r = await s.runCode(
      "for i in range(12): display({'text/plain': 'x' * 8_000_000}, raw=True)",
      { timeoutMs: 120_000 },
    );
    expect(r.error).toBeNull();
    const kept = r.results.filter((x) => x.metadata.corral === undefined);
    expect(kept.length).toBeGreaterThan(0);
    expect(kept.length).toBeLessThan(12);
    const marker = r.results.at(-1)!;
    expect(marker.data["text/plain"]).toMatch(
      /^\[corral: \d+ more output\(s\), \d+ bytes, dropped/,
    );
    await s.destroy();
  });
});
