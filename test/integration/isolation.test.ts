/** The `isolation` group of ../shared/cases/hostile.yaml, against real sandboxes. */
import { execFileSync, spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import { Sandbox } from "../../src/sandbox/sandbox.js";
import { type TestEnv, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
beforeAll(async () => {
  env = await testEnv("isolation");
});
afterAll(() => env?.close());

const sh = (code: string) => env.run("shell", code);

describe("isolation", () => {
  it("capabilities-empty: no capabilities, no_new_privs, seccomp filtering", async () => {
    const r = await sh("grep -E 'Cap(Eff|Prm|Amb|Inh|Bnd)|NoNewPrivs|Seccomp:' /proc/self/status");
    const fields = Object.fromEntries(
      r.stdout.text
        .trim()
        .split("\n")
        .map((l) => l.split(/:\s+/)),
    );
    expect(fields).toEqual({
      CapInh: "0000000000000000",
      CapPrm: "0000000000000000",
      CapEff: "0000000000000000",
      CapBnd: "0000000000000000",
      CapAmb: "0000000000000000",
      NoNewPrivs: "1",
      Seccomp: "2",
    });
  });

  it("host-files-invisible: a host marker cannot be found or read by any path", async () => {
    const marker = path.join(env.config.dataDir, "host-marker-7f3a");
    writeFileSync(marker, "HOST-SECRET-7f3a");
    const r = await sh(
      `for p in ${marker} /proc/1/root${marker} /proc/self/root${marker} /proc/1/cwd/host-marker-7f3a; do cat "$p" 2>/dev/null && echo "READ $p"; done
       find / -xdev -name 'host-marker-7f3a' 2>/dev/null; grep -rs HOST-SECRET-7f3a /proc/1/root/ /etc /root /work 2>/dev/null | head -1
       echo done`,
    );
    expect(r.stdout.text).toBe("done\n");
  });

  it("no-new-namespaces: unshare and clone(CLONE_NEWUSER) fail with EPERM", async () => {
    const r = await sh("unshare -Ur true; echo rc=$?");
    expect(r.stdout.text).toBe("rc=1\n");
    expect(r.stderr.text).toMatch(/Operation not permitted/);
    const py = await env.run(
      "python",
      [
        "import ctypes, os",
        "libc = ctypes.CDLL(None, use_errno=True)",
        "for flag in (0x10000000, 0x20000, 0x40000000, 0x20000000):",
        "    rc = libc.syscall(56, flag | 17, 0, 0, 0, 0)",
        "    if rc == 0: os._exit(0)",
        "    print(rc, os.strerror(ctypes.get_errno()))",
        "print(libc.unshare(0x10000000), os.strerror(ctypes.get_errno()))",
      ].join("\n"),
    );
    expect(py.stdout.text).toBe("-1 Operation not permitted\n".repeat(5));
  });

  it("no leases: F_SETLEASE is refused, other fcntl commands work", async () => {
    const r = await env.run(
      "python",
      [
        "import fcntl, os",
        "fd = os.open('/opt/venv/bin/python3', os.O_RDONLY)",
        "print(fcntl.fcntl(fd, fcntl.F_GETFD) >= 0)",
        "try:",
        "    fcntl.fcntl(fd, 1024, fcntl.F_RDLCK); print('lease taken')",
        "except OSError as e: print(e.errno)",
      ].join("\n"),
    );
    expect(r.stdout.text).toBe("True\n1\n");
  });

  it("host quotas: queued signals and message queues are bounded per sandbox", async () => {
    const r = await env.run("shell", "ulimit -i; ulimit -q");
    expect(r.stdout.text).toBe("1024\n65536\n");
  });

  it("no-mount: mount fails", async () => {
    const r = await sh("mount -t tmpfs x /mnt; echo rc=$?");
    expect(r.stdout.text).toMatch(/rc=(1|32)\n$/);
    expect(r.stdout.text).not.toBe("rc=0\n");
  });

  it("proc-sys-readonly: /proc/sys, sysrq-trigger and kcore are out of reach", async () => {
    const before = readFileSync("/proc/sys/kernel/core_pattern", "utf8");
    const r = await sh(
      "echo x > /proc/sys/kernel/core_pattern && echo W1; echo x > /proc/sysrq-trigger && echo W2; n=$(cat /proc/kcore 2>/dev/null | head -c 1 | wc -c); echo kcore=$n; echo x > /sys/kernel/uevent_helper && echo W3; echo end",
    );
    expect(r.stdout.text).toBe("kcore=0\nend\n");
    expect(readFileSync("/proc/sys/kernel/core_pattern", "utf8")).toBe(before);
  });

  it("devices: only the minimal set; mknod and /dev/mem fail", async () => {
    const r = await sh(
      "ls /dev | tr '\\n' ' '; echo; mknod /tmp/sda b 8 0; echo mknod=$?; cat /dev/mem | head -c1 | wc -c",
    );
    const [devs, mknod, mem] = r.stdout.text.split("\n");
    expect(devs?.trim().split(" ").sort()).toEqual(
      [
        "fd",
        "full",
        "mqueue",
        "null",
        "ptmx",
        "pts",
        "random",
        "shm",
        "stderr",
        "stdin",
        "stdout",
        "tty",
        "urandom",
        "zero",
      ].sort(),
    );
    expect(mknod).toBe("mknod=1");
    expect(mem).toBe("0");
  });

  it("pid-view: only the sandbox's processes; kill -9 -1 hits only them", async () => {
    const hostSleeper = spawn("sleep", ["60"], { stdio: "ignore" });
    try {
      const r = await sh(
        // sort and tr are exec'd while the group sleeps, and ps replaces the group's
        // subshell: ps cannot catch a pipeline stage still forked but not yet exec'd.
        "ps -e --no-headers | wc -l; sleep 30 & kill -9 -1; echo still here; { sleep 0.3; exec ps -e --no-headers -o comm; } | sort | tr '\\n' ' '",
      );
      const [count, still, after] = r.stdout.text.split("\n");
      // supervisor, bash, ps, wc: nothing of the host
      expect(Number(count)).toBeLessThanOrEqual(5);
      expect(still).toBe("still here");
      // the supervisor runs as /.corral/supervisor, so its comm is "supervisor"
      expect(after?.trim().split(" ")).toEqual(["bash", "ps", "sort", "supervisor", "tr"]);
      expect(hostSleeper.exitCode).toBeNull();
      expect(hostSleeper.signalCode).toBeNull();
    } finally {
      hostSleeper.kill("SIGKILL");
    }
  });

  it("no-secrets-in-env: the host's environment does not leak in", async () => {
    process.env.CORRAL_TEST_API_KEY = "sk-test-should-not-leak";
    try {
      const r = await sh("env; cat /proc/1/environ | tr '\\0' '\\n'; echo end");
      expect(r.stdout.text).not.toContain("sk-test-should-not-leak");
      expect(r.stdout.text).not.toMatch(/^HOME=(?!\/root$)/m);
      expect(r.stderr.text).toMatch(/Permission denied/); // /proc/1 is the non-dumpable supervisor
    } finally {
      delete process.env.CORRAL_TEST_API_KEY;
    }
  });

  it("runtime-sockets: no socket is reachable by path", async () => {
    const r = await sh(
      "find / -xdev -type s 2>/dev/null; find /dev /tmp /run -type s 2>/dev/null; echo end",
    );
    expect(r.stdout.text).toBe("end\n");
  });

  it("block devices are not listed: no neighbour's layer file, no disk's I/O counters", async () => {
    const neighbour = await Sandbox.create(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
    });
    try {
      const r = await env.run(
        "shell",
        [
          "cat /sys/block/loop*/loop/backing_file /sys/devices/virtual/block/loop*/loop/backing_file 2>/dev/null",
          "for d in /sys/block /sys/class/block /sys/devices/virtual/block /sys/dev/block /sys/class/bdi /sys/devices/virtual/bdi /sys/fs/ext4 /proc/fs/ext4 /proc/fs/jbd2; do ls -A $d; done | wc -w",
          "cat /proc/diskstats /proc/partitions | wc -c",
          // The host's own disks: no stat file reachable anywhere under /sys/devices.
          "find /sys/devices -name stat -path '*/block/*' 2>/dev/null | wc -l",
          "echo end",
        ].join("; "),
      );
      expect(r.stdout.text).toBe("0\n0\n0\nend\n");
      expect(r.stdout.text).not.toContain(neighbour.id);
    } finally {
      await neighbour.destroy();
    }
  });

  it("neighbours-isolated: processes, files, abstract sockets and network", async () => {
    const a = await Sandbox.create(env.host, { image: env.image, limits: { ...DEFAULT_LIMITS } });
    const b = await Sandbox.create(env.host, { image: env.image, limits: { ...DEFAULT_LIMITS } });
    try {
      const run = (sb: Sandbox, code: string, timeoutMs = 10_000) =>
        sb.exec({ argv: ["bash", "-c", code], timeoutMs, outputCapBytes: 1 << 20 });
      await run(a, "echo secret > /tmp/a-file; echo secret > /work/a-file");
      // a listener in A: TCP on loopback and an abstract unix socket, left running
      const listener = run(
        a,
        "python3 -c \"import socket,time\ns=socket.socket(); s.bind(('127.0.0.1', 7777)); s.listen()\nu=socket.socket(socket.AF_UNIX); u.bind('\\0corral-neighbour'); u.listen()\nprint('up', flush=True); time.sleep(20)\"",
        20_000,
      );
      await new Promise((r) => setTimeout(r, 1500));
      const seen = await run(
        b,
        [
          "ls /tmp/a-file /work/a-file 2>/dev/null; echo files-done",
          "ps -e --no-headers -o comm | grep -c python3",
          "python3 -c \"import socket\nfor fam, addr in ((socket.AF_INET, ('127.0.0.1', 7777)), (socket.AF_UNIX, '\\0corral-neighbour')):\n    s = socket.socket(fam)\n    try: s.connect(addr); print('CONNECTED', addr)\n    except OSError as e: print('refused', e.errno)\"",
        ].join("\n"),
      );
      expect(seen.stdout.bytes().toString()).toBe("files-done\n0\nrefused 111\nrefused 111\n");
      await a.killAll();
      await listener;
    } finally {
      await a.destroy();
      await b.destroy();
    }
  });
});

describe("hostile host-side inputs", () => {
  it("the leak checker itself works: runc sees no container of this data dir now", () => {
    const out = execFileSync(
      "runc",
      ["--root", path.join(env.config.dataDir, "runc"), "list", "-q"],
      { encoding: "utf8" },
    );
    expect(out.trim()).toBe("");
  });
});
