/**
 * The file API of a live session (`session.files`) on real sandboxes: every operation,
 * the `files` group of ../shared/cases/hostile.yaml, symlink and hard-link races, size
 * caps that leave nothing behind, flow control, and what user code can do to the
 * supervisor that serves the API.
 *
 * Host files are proved out of reach with markers: a distinctive file planted on the host
 * at a path the sandbox could only reach if a path were resolved against the host's root
 * (as /proc/PID/root/... does with absolute symlinks).
 */
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import { constants } from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CorralError } from "../../src/core/errors.js";
import { DEFAULT_LIMITS, type Limits, MiB } from "../../src/core/limits.js";
import { Sandbox } from "../../src/sandbox/sandbox.js";
import { Session, type SessionOptions } from "../../src/sandbox/session.js";
import {
  decodeError,
  decodeFileDone,
  Ev,
  encodeFileList,
  encodeFileRead,
  encodeFileStat,
  encodeFrame,
  type Frame,
  FrameDecoder,
  Req,
  u32,
} from "../../src/supervisor/protocol.js";
import { type TestEnv, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
let s: Session;
const open: Session[] = [];
/** A directory on the host, with a secret in it, that no file operation may reach. */
let markerDir: string;
const HOST_SECRET = `HOST-SECRET-${randomBytes(6).toString("hex")}`;

async function session(
  limits: Partial<Limits> = {},
  opts: Partial<SessionOptions> = {},
): Promise<Session> {
  const created = await Session.create(env.host, {
    image: env.image,
    limits: { ...DEFAULT_LIMITS, ...limits },
    ...opts,
  });
  open.push(created);
  return created;
}

beforeAll(async () => {
  env = await testEnv("files");
  markerDir = path.join(env.config.dataDir, `host-marker-${randomBytes(4).toString("hex")}`);
  mkdirSync(markerDir);
  writeFileSync(path.join(markerDir, "secret"), HOST_SECRET);
  s = await session();
});
afterAll(async () => {
  await Promise.all(open.map((x) => x.destroy()));
  env?.close();
});

async function sh(code: string, on: Session = s): Promise<string> {
  const r = await on.commands.run(code);
  if (r.exitCode !== 0) throw new Error(`exit ${r.exitCode}: ${r.stderr.text}`);
  return r.stdout.text;
}

/** The CorralError an operation fails with (and it must fail with one). */
async function failure(p: Promise<unknown>): Promise<CorralError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(CorralError);
    expect((err as CorralError).message).not.toMatch(/\n/);
    return err as CorralError;
  }
  throw new Error("expected the operation to fail");
}

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function hostMarkerUntouched(): void {
  expect(readdirSync(markerDir)).toEqual(["secret"]);
  expect(readFileSync(path.join(markerDir, "secret"), "utf8")).toBe(HOST_SECRET);
}

describe("files: operations", () => {
  it("writes and reads text and bytes, relative to the workdir or absolute", async () => {
    const info = await s.files.write("notes/a.txt", "héllo\n");
    expect(info).toEqual({ name: "a.txt", path: "/work/notes/a.txt", type: "file", size: 7 });
    expect(await s.files.read("/work/notes/a.txt")).toBe("héllo\n");
    expect(await sh("cat /work/notes/a.txt")).toBe("héllo\n");
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await s.files.write("/tmp/all-bytes", all);
    const back = await s.files.read("/tmp/all-bytes", { format: "bytes" });
    expect(Buffer.isBuffer(back)).toBe(true);
    expect(back.equals(all)).toBe(true);
    await s.files.write("/tmp/u8", new Uint8Array([1, 2, 3]));
    expect([...(await s.files.read("/tmp/u8", { format: "bytes" }))]).toEqual([1, 2, 3]);
    await s.files.write("/tmp/empty", "");
    expect(await s.files.read("/tmp/empty")).toBe("");
  });

  it("serves /, /tmp, /root and /work: one filesystem, the writable layer", async () => {
    for (const dir of ["/", "/tmp", "/root", "/work", "/var/tmp"]) {
      const file = path.posix.join(dir, "one-mount.txt");
      await s.files.write(file, dir);
      expect(await s.files.read(file)).toBe(dir);
    }
    // The image's own files are read through the overlay.
    expect(await s.files.read("/etc/hostname")).toBe("sandbox\n");
  });

  it("a replaced file keeps its mode unless one is given; new files get 0644", async () => {
    await sh("printf '#!/bin/sh\\necho one\\n' > /work/run.sh && chmod 750 /work/run.sh");
    await s.files.write("/work/run.sh", "#!/bin/sh\necho two\n");
    expect((await s.files.stat("/work/run.sh")).mode).toBe(0o750);
    expect(await sh("/work/run.sh")).toBe("two\n");
    await s.files.write("/work/run.sh", "x", { mode: 0o600 });
    expect((await s.files.stat("/work/run.sh")).mode).toBe(0o600);
    await s.files.write("/work/new.txt", "x");
    expect(await sh("stat -c '%a %U' /work/new.txt")).toBe("644 root\n");
    await expect(s.files.write("/work/x", "x", { mode: 0o4755 })).rejects.toThrow(/0o777/);
  });

  it("lists entries with their kind, size, mode and time, to a depth", async () => {
    await sh(
      "mkdir -p /work/tree/sub/deeper && echo -n 12345 > /work/tree/f && ln -s /etc /work/tree/link && echo x > /work/tree/sub/g && touch /work/tree/sub/deeper/h",
    );
    const one = await s.files.list("/work/tree");
    expect(one.map((e) => [e.name, e.type])).toEqual([
      ["f", "file"],
      ["link", "symlink"],
      ["sub", "dir"],
    ]);
    const f = one[0]!;
    expect(f).toMatchObject({ path: "/work/tree/f", size: 5, mode: 0o644, uid: 0, gid: 0 });
    expect(Math.abs(f.mtime.getTime() - Date.now())).toBeLessThan(60_000);
    expect(one[1]!.symlinkTarget).toBe("/etc");
    const two = await s.files.list("tree", { depth: 2 });
    expect(two.map((e) => e.path)).toEqual([
      "/work/tree/f",
      "/work/tree/link",
      "/work/tree/sub",
      "/work/tree/sub/deeper",
      "/work/tree/sub/g",
    ]);
    // A symlink is never entered, whatever the depth.
    const deep = await s.files.list("/work/tree", { depth: 10 });
    expect(deep.map((e) => e.path)).not.toContain("/work/tree/link/hostname");
    expect(deep).toHaveLength(6);
    expect((await failure(s.files.list("/work/tree/f"))).code).toBe("invalid_argument");
    expect((await failure(s.files.list("/work/missing"))).code).toBe("not_found");
    await expect(s.files.list("/work", { depth: 0 })).rejects.toThrow(/depth must be/);
  });

  it("lists mount points inside the sandbox but never enters them", async () => {
    const root = await s.files.list("/", { depth: 3 });
    const names = root.map((e) => e.path);
    for (const mount of ["/proc", "/dev", "/sys"]) {
      expect(names).toContain(mount);
      expect(names.filter((n) => n.startsWith(`${mount}/`))).toEqual([]);
    }
    expect(names).toContain("/.corral/supervisor");
  });

  it("stat and exists: symlinks are described, or followed on request", async () => {
    await sh("ln -sfn /etc/hostname /tmp/hn && ln -sfn /nowhere /tmp/dangling");
    const link = await s.files.stat("/tmp/hn");
    expect(link).toMatchObject({ type: "symlink", symlinkTarget: "/etc/hostname", name: "hn" });
    const target = await s.files.stat("/tmp/hn", { followSymlinks: true });
    expect(target).toMatchObject({ type: "file", size: 8, path: "/tmp/hn" });
    expect((await s.files.stat("/")).type).toBe("dir");
    expect(await s.files.exists("/tmp/hn")).toBe(true);
    expect(await s.files.exists("/tmp/dangling")).toBe(true);
    expect(await s.files.exists("/tmp/nothing-here")).toBe(false);
    expect((await failure(s.files.stat("/tmp/dangling", { followSymlinks: true }))).code).toBe(
      "not_found",
    );
    // A refusal is not "does not exist".
    expect((await failure(s.files.exists("/proc/1/environ"))).code).toBe("permission_denied");
  });

  it("mkdir: one level or recursive, exact mode, true only when it made one", async () => {
    expect(await s.files.mkdir("/work/m")).toBe(true);
    expect(await s.files.mkdir("/work/m")).toBe(false);
    expect((await failure(s.files.mkdir("/work/m2/a/b"))).code).toBe("not_found");
    expect(await s.files.mkdir("/work/m2/a/b", { recursive: true, mode: 0o700 })).toBe(true);
    expect(await sh("stat -c %a /work/m2 /work/m2/a/b")).toBe("755\n700\n");
    await s.files.write("/work/m3", "file");
    const e = await failure(s.files.mkdir("/work/m3"));
    expect(e.code).toBe("invalid_argument");
    expect(e.message).toMatch(/exists and is not a directory/);
    await sh("ln -sfn /work/m /work/m-link");
    expect(await s.files.mkdir("/work/m-link")).toBe(false);
    expect(await s.files.mkdir("/")).toBe(false);
  });

  it("remove: files, symlinks (not their target), empty or, recursively, full trees", async () => {
    await sh(
      "mkdir -p /work/r/a/b && touch /work/r/a/b/c /work/r/f && echo keep > /work/keep && ln -s /work/keep /work/r/link && ln -s /work/keep /work/keep-link",
    );
    await s.files.remove("/work/keep-link");
    expect(await sh("cat /work/keep")).toBe("keep\n");
    const e = await failure(s.files.remove("/work/r"));
    expect(e.code).toBe("invalid_argument");
    expect(e.message).toMatch(/not empty/);
    await s.files.remove("/work/r", { recursive: true });
    expect(await s.files.exists("/work/r")).toBe(false);
    expect(await sh("cat /work/keep")).toBe("keep\n");
    await s.files.mkdir("/work/empty");
    await s.files.remove("/work/empty");
    expect((await failure(s.files.remove("/work/r"))).code).toBe("not_found");
    await expect(s.files.remove("/", { recursive: true })).rejects.toThrow(
      "cannot remove the root directory",
    );
    // Mount points cannot be removed, nor their contents reached.
    expect((await failure(s.files.remove("/dev", { recursive: true }))).code).toBe(
      "permission_denied",
    );
    expect((await failure(s.files.remove("/dev/null"))).code).toBe("permission_denied");
    expect(await sh("ls /dev/null /proc/1/status | wc -l")).toBe("2\n");
  });

  it("rename: moves and replaces; overwrite: false refuses; no move to another mount", async () => {
    await s.files.write("/work/mv-a", "a");
    await s.files.write("/work/mv-b", "b");
    const moved = await s.files.rename("mv-a", "/tmp/mv-c");
    expect(moved).toMatchObject({ path: "/tmp/mv-c", type: "file", size: 1 });
    expect(await s.files.exists("/work/mv-a")).toBe(false);
    const e = await failure(s.files.rename("/tmp/mv-c", "/work/mv-b", { overwrite: false }));
    expect(e.code).toBe("invalid_argument");
    await s.files.rename("/tmp/mv-c", "/work/mv-b");
    expect(await s.files.read("/work/mv-b")).toBe("a");
    expect((await failure(s.files.rename("/work/mv-b", "/dev/shm/x"))).code).toBe(
      "permission_denied",
    );
    expect((await failure(s.files.rename("/work/missing", "/work/x"))).code).toBe("not_found");
  });

  it("streams both ways: upload from a Readable, download as a Readable", async () => {
    const parts = [Buffer.from("one,"), "two,", new Uint8Array([0x33])];
    const up = await s.files.upload("/work/streamed.txt", Readable.from(parts));
    expect(up.size).toBe(9);
    expect(await s.files.read("/work/streamed.txt")).toBe("one,two,3");
    async function* gen() {
      for (let i = 0; i < 100; i++) yield Buffer.alloc(1000, i);
    }
    await s.files.write("/work/gen.bin", gen());
    const down = await s.files.download("/work/gen.bin");
    const got = await collect(down);
    expect(got).toHaveLength(100_000);
    expect(got[99_999]).toBe(99);
    const viaRead = await s.files.read("/work/gen.bin", { format: "stream" });
    expect((await collect(viaRead)).equals(got)).toBe(true);
    await expect(s.files.upload("/work/x", "not a stream" as never)).rejects.toThrow(
      /Readable or an async iterable/,
    );
  });

  it("records every operation in the event log, refusals as denied", async () => {
    const e = await failure(s.files.read("/proc/1/environ"));
    expect(e.code).toBe("permission_denied");
    await s.files.write("/work/evt.txt", "12345");
    await s.files.read("/work/evt.txt");
    const events = env.host.events
      .list({ sandbox: s.id })
      .filter((ev) => ev.kind.startsWith("file."));
    const kinds = new Set(events.map((ev) => ev.kind));
    for (const k of ["read", "write", "list", "stat", "mkdir", "remove", "rename"])
      expect(kinds).toContain(`file.${k}`);
    const last = events.slice(-3);
    expect(last.map((ev) => [ev.kind, ev.outcome, ev.details.path, ev.details.bytes])).toEqual([
      ["file.read", "denied", "/proc/1/environ", undefined],
      ["file.write", "ok", "/work/evt.txt", 5],
      ["file.read", "ok", "/work/evt.txt", 5],
    ]);
    expect(last[0]!.details.code).toBe("permission_denied");
    expect(env.host.events.verify()).toBeNull();
  });
});

describe("files: the hostile cases", () => {
  it("traversal-names: .., absolute, ..%2f, NUL and 5000-byte paths are confined or refused", async () => {
    expect(existsSync("/x")).toBe(false);
    expect(existsSync("/etc/x")).toBe(false);
    await s.files.write("../../x", "inside");
    await s.files.write("/etc/x", "inside too");
    expect(await sh("cat /x /etc/x")).toBe("insideinside too");
    expect(existsSync("/x")).toBe(false);
    expect(existsSync("/etc/x")).toBe(false);
    await s.files.write("..%2f..%2fescape", "literal");
    expect(await sh("ls -A /work | grep escape")).toBe("..%2f..%2fescape\n");
    const nul = await failure(s.files.write("a\0b", "x"));
    expect([nul.code, nul.message]).toEqual(["invalid_argument", "the path contains a NUL byte"]);
    const long = await failure(s.files.read(`/${"a".repeat(4999)}`));
    expect([long.code, long.message]).toEqual([
      "invalid_argument",
      "the path is 5000 bytes long; the limit is 4095",
    ]);
    // The host marker's own path, reached by climbing: the sandbox has no such file, and
    // a write lands inside the sandbox.
    const climb = `${"../".repeat(20)}${markerDir.slice(1)}/secret`;
    expect((await failure(s.files.read(climb))).code).toBe("not_found");
    await s.files.write(climb, "sandbox copy");
    expect(await sh(`cat ${markerDir}/secret`)).toBe("sandbox copy");
    hostMarkerUntouched();
    await sh(`rm -r ${markerDir}`);
  });

  it("symlink-out: links to host paths resolve inside the sandbox, never on the host", async () => {
    await sh(
      `ln -sfn /etc/shadow /tmp/s && ln -sfn / /tmp/root && ln -sfn ${markerDir}/secret /tmp/m`,
    );
    const shadow = await s.files.read("/tmp/s");
    expect(shadow).toBe(await sh("cat /etc/shadow"));
    expect(shadow).not.toBe(readFileSync("/etc/shadow", "utf8"));
    const viaDownload = await collect(await s.files.download("/tmp/root/etc/hostname"));
    expect(viaDownload.toString()).toBe("sandbox\n");
    expect(readFileSync("/etc/hostname", "utf8")).not.toBe("sandbox\n");
    expect((await failure(s.files.read("/tmp/m"))).code).toBe("not_found");
    expect((await failure(s.files.read(`/tmp/root${markerDir}/secret`))).code).toBe("not_found");
    expect((await failure(s.files.list(`/tmp/root${markerDir}`))).code).toBe("not_found");
    // Writing through the links changes the sandbox's files only.
    await s.files.write(`/tmp/root${markerDir}/secret`, "planted");
    await s.files.write("/tmp/m", "through the link");
    expect(await sh(`cat ${markerDir}/secret`)).toBe("through the link");
    hostMarkerUntouched();
    await sh(`rm -r ${markerDir}`);
  });

  it("magic links and other mounts are refused: /proc, /dev, /sys, /dev/shm, the binds", async () => {
    await sh(
      "ln -sfn /proc/1/environ /tmp/env-link && ln -sfn /proc/self/root /tmp/proc-root && echo shm > /dev/shm/f",
    );
    for (const p of [
      "/proc/1/environ",
      "/proc/self/environ",
      "/proc/1/root/etc/hostname",
      "/proc/self/root/etc/hostname",
      "/proc/self/fd/0",
      "/proc/1/fd/3",
      "/tmp/env-link",
      "/tmp/proc-root/etc/hostname",
      "/dev/zero",
      "/dev/null",
      "/dev/shm/f",
      "/sys/kernel/uevent_helper",
      "/sys/fs/cgroup/memory.max",
      "/.corral/supervisor",
      "/.corral/kernels/python.py",
    ]) {
      const e = await failure(s.files.read(p));
      expect([p, e.code]).toEqual([p, "permission_denied"]);
      expect(e.message).toMatch(/outside the sandbox's own filesystem|magic link/);
    }
    for (const p of ["/proc/1/x", "/dev/shm/g", "/sys/x"]) {
      expect((await failure(s.files.write(p, "x"))).code).toBe("permission_denied");
    }
    // A symlink loop is refused the same way (ELOOP), for reads and writes alike.
    await sh("ln -sfn /tmp/loop-b /tmp/loop-a && ln -sfn /tmp/loop-a /tmp/loop-b");
    for (const op of [s.files.read("/tmp/loop-a"), s.files.write("/tmp/loop-a", "x")]) {
      const e = await failure(op);
      expect([e.code, e.message]).toEqual([
        "permission_denied",
        e.message.replace(/:.*/, ": too many symlinks, or a /proc magic link (not followed)"),
      ]);
    }
    expect((await failure(s.files.list("/proc"))).code).toBe("permission_denied");
    expect((await failure(s.files.stat("/dev/zero"))).code).toBe("permission_denied");
    expect(await sh("cat /dev/shm/f; ls /sys/x 2>&1 | wc -l")).toBe("shm\n1\n");
  });

  it("fifo-download: a FIFO, a socket and a directory are refused at once", async () => {
    await sh(
      "mkfifo /tmp/p && python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('/tmp/sock')\"",
    );
    const t0 = performance.now();
    for (const [p, kind] of [
      ["/tmp/p", "a FIFO"],
      ["/tmp/sock", "a socket"],
      ["/tmp", "a directory"],
    ] as const) {
      const e = await failure(s.files.download(p));
      expect([e.code, e.message]).toEqual([
        "invalid_argument",
        `read ${p}: ${kind}, not a regular file (refused)`,
      ]);
      expect((await failure(s.files.write(p, "x"))).code).toBe("invalid_argument");
    }
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(await sh("stat -c %F /tmp/p /tmp/sock")).toBe("fifo\nsocket\n");
  });

  it("unicode-paths: names with spaces and ü listed right, bytes identical, 20 MB sha256 kept", async () => {
    const text = Buffer.from("grüße, 😀\n\u0000\xff", "latin1");
    await s.files.write("dir with space/ü.txt", text);
    const listed = await s.files.list("/work/dir with space");
    expect(listed.map((e) => [e.name, e.path, e.size])).toEqual([
      ["ü.txt", "/work/dir with space/ü.txt", text.length],
    ]);
    expect(await sh("ls '/work/dir with space'")).toBe("ü.txt\n");
    expect((await s.files.read("dir with space/ü.txt", { format: "bytes" })).equals(text)).toBe(
      true,
    );
    const big = randomBytes(20 * 1000 * 1000);
    const chunks = Array.from({ length: Math.ceil(big.length / 65536) }, (_, i) =>
      big.subarray(i * 65536, (i + 1) * 65536),
    );
    const up = await s.files.upload("/work/dir with space/big ü.bin", Readable.from(chunks));
    expect(up.size).toBe(big.length);
    expect(await sh("sha256sum '/work/dir with space/big ü.bin' | cut -d' ' -f1")).toBe(
      `${sha256(big)}\n`,
    );
    const down = await collect(await s.files.download("/work/dir with space/big ü.bin"));
    expect(sha256(down)).toBe(sha256(big));
  });
});

describe("files: races and links", () => {
  it("a write through a hard link planted at the target leaves the link's other name alone", async () => {
    await sh("echo original > /work/hl && ln /work/hl /tmp/hl-other && ln /etc/passwd /work/pw");
    await s.files.write("/work/hl", "replaced\n");
    expect(await sh("cat /work/hl /tmp/hl-other")).toBe("replaced\noriginal\n");
    const before = await sh("md5sum /etc/passwd");
    await s.files.write("/work/pw", "x");
    expect(await sh("md5sum /etc/passwd")).toBe(before);
    expect(await sh("stat -c %h /work/hl /tmp/hl-other")).toBe("1\n1\n");
  });

  it("a symlink swapped between a directory and / in a loop: 10,000 reads, no host file", async () => {
    // Inside: /tmp/real holds the marker's path with one content, the sandbox's own
    // root another. /tmp/x is flipped by a shell loop (ln -sfn + mv -T: a symlink to
    // /tmp/real or to /), /tmp/xchg by renameat2(RENAME_EXCHANGE) with /tmp/xchg-link
    // (a real directory one instant, a symlink to / the next, with no gap).
    const rel = markerDir.slice(1);
    await sh(
      [
        `mkdir -p /tmp/real/${rel} /tmp/xchg/${rel} /${rel}`,
        `echo -n real > /tmp/real/${rel}/secret`,
        `echo -n real > /tmp/xchg/${rel}/secret`,
        `echo -n root > /${rel}/secret`,
        "ln -sfn / /tmp/xchg-link",
        "cat > /tmp/swap.sh <<'EOF'\nwhile :; do ln -sfn /tmp/real /tmp/x.new && mv -T /tmp/x.new /tmp/x; ln -sfn / /tmp/x.new && mv -T /tmp/x.new /tmp/x; done\nEOF",
        "cat > /tmp/xchg.py <<'EOF'\nimport ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nwhile True:\n    libc.syscall(316, -100, b'/tmp/xchg', -100, b'/tmp/xchg-link', 2)\nEOF",
        "(setsid bash /tmp/swap.sh </dev/null >/dev/null 2>&1 & echo $! > /tmp/swap.pid)",
        "(setsid python3 /tmp/xchg.py </dev/null >/dev/null 2>&1 & echo $! > /tmp/xchg.pid)",
      ].join("\n"),
    );
    try {
      const seen = new Map<string, number>();
      const t0 = performance.now();
      const paths = [`/tmp/x/${rel}/secret`, `/tmp/xchg/${rel}/secret`];
      for (let batch = 0; batch < 40; batch++) {
        const results = await Promise.all(
          Array.from({ length: 250 }, (_, i) =>
            s.files.read(paths[i % 2]!).then(
              (text) => text,
              (err: CorralError) => err.code,
            ),
          ),
        );
        for (const r of results) seen.set(r, (seen.get(r) ?? 0) + 1);
      }
      const ms = performance.now() - t0;
      for (const outcome of seen.keys()) expect(["real", "root", "not_found"]).toContain(outcome);
      expect(seen.has(HOST_SECRET)).toBe(false);
      // Both sides of the race were seen: the swap was live while the reads ran.
      expect(seen.get("real")).toBeGreaterThan(0);
      expect(seen.get("root")).toBeGreaterThan(0);
      expect([...seen.values()].reduce((a, b) => a + b)).toBe(10_000);
      expect(ms).toBeLessThan(60_000);

      // Writes racing the same swaps land in one of the sandbox's two places, never on the host.
      const writes = await Promise.all(
        Array.from({ length: 400 }, (_, i) =>
          s.files.write(`${i % 2 ? "/tmp/x" : "/tmp/xchg"}/${rel}/w-${i}`, String(i)).then(
            () => 1,
            () => 0,
          ),
        ),
      );
      await sh("kill -9 $(cat /tmp/swap.pid) $(cat /tmp/xchg.pid)");
      // Every write landed exactly once, in one of the sandbox's places (find does not
      // follow the symlinks it is given, so nothing is counted twice), and no temporary
      // file was left.
      const dirs = `/tmp/real /tmp/xchg /tmp/xchg-link /${rel}`;
      const landed = await sh(
        `find ${dirs} -name 'w-*' | wc -l; find / -xdev -name '.corral-write-*' | wc -l`,
      );
      const ok = writes.reduce<number>((a, b) => a + b, 0);
      expect(ok).toBeGreaterThan(300);
      expect(landed).toBe(`${ok}\n0\n`);
      hostMarkerUntouched();
    } finally {
      await s.commands.run("kill -9 $(cat /tmp/swap.pid) $(cat /tmp/xchg.pid) 2>/dev/null");
    }
  });
});

describe("files: size caps, disk and file size limits", () => {
  let small: Session;
  beforeAll(async () => {
    small = await session({ diskBytes: 64 * MiB, fileSizeBytes: 48 * MiB }, { maxFileBytes: MiB });
  });

  async function leftovers(dir: string, on: Session): Promise<string> {
    return sh(`ls -A ${dir}`, on);
  }

  it("an oversized write is refused with nothing left behind, from bytes or a stream", async () => {
    await sh("mkdir -p /work/cap && echo -n keep > /work/cap/existing", small);
    const bytes = await failure(small.files.write("/work/cap/big", Buffer.alloc(MiB + 1)));
    expect([bytes.code, bytes.message]).toEqual([
      "too_large",
      "write /work/cap/big: 1048577 bytes is over the 1 MiB cap; nothing was written",
    ]);
    const stream = await failure(
      small.files.upload(
        "/work/cap/existing",
        Readable.from(Array.from({ length: 40 }, () => Buffer.alloc(100_000))),
      ),
    );
    expect(stream.code).toBe("too_large");
    expect(stream.hint).toMatch(/maxFileBytes/);
    expect(await leftovers("/work/cap", small)).toBe("existing\n");
    expect(await small.files.read("/work/cap/existing")).toBe("keep");
    // Exactly at the cap is fine.
    await small.files.write("/work/cap/at-cap", Buffer.alloc(MiB));
    expect((await small.files.stat("/work/cap/at-cap")).size).toBe(MiB);
  });

  it("a file over the cap is not read", async () => {
    await sh("head -c 2000000 /dev/zero > /work/cap/too-big", small);
    const e = await failure(small.files.read("/work/cap/too-big"));
    expect(e.code).toBe("too_large");
    expect(e.message).toBe("read /work/cap/too-big: 2000000 bytes, over the 1048576-byte cap");
    expect((await failure(small.files.download("/work/cap/too-big"))).code).toBe("too_large");
  });

  it("a full disk and the file size limit fail cleanly; the supervisor lives on", async () => {
    const roomy = await session(
      { diskBytes: 64 * MiB, fileSizeBytes: 8 * MiB },
      { maxFileBytes: 100 * MiB },
    );
    // RLIMIT_FSIZE binds the supervisor too: EFBIG, not a SIGXFSZ that would kill PID 1.
    const fsize = await failure(roomy.files.write("/work/f", Buffer.alloc(9 * MiB)));
    expect(fsize.code).toBe("too_large");
    expect(await leftovers("/work", roomy)).toBe("");
    // A disk that fills: ENOSPC, and the partial file is gone.
    await sh(
      "for i in $(seq 1 10); do head -c 8000000 /dev/zero > /tmp/fill$i || true; done",
      roomy,
    );
    const full = await failure(roomy.files.write("/work/g", Buffer.alloc(7 * MiB)));
    expect(full.code).toBe("not_enough_space");
    expect(await leftovers("/work", roomy)).toBe("");
    expect(await roomy.files.read("/etc/hostname")).toBe("sandbox\n");
    expect(roomy.sandbox.running).toBe(true);
  });
});

describe("files: flow control and cancellation", () => {
  it("a download nobody reads holds one window; the supervisor keeps answering", async () => {
    const big = randomBytes(20 * MiB);
    await s.files.write("/tmp/slow.bin", big);
    const stream = await s.files.download("/tmp/slow.bin");
    await new Promise((r) => setTimeout(r, 300));
    // Only the window and the stream's buffer came across, not the file.
    expect(stream.readableLength).toBeLessThanOrEqual(6 * MiB);
    const t0 = performance.now();
    expect(await sh("echo alive")).toBe("alive\n");
    expect((await s.files.stat("/tmp/slow.bin")).size).toBe(big.length);
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(sha256(await collect(stream))).toBe(sha256(big));
  });

  it("a download destroyed half-way stops the transfer; later operations work", async () => {
    const stream = await s.files.download("/tmp/slow.bin");
    let got = 0;
    for await (const c of stream) {
      got += (c as Buffer).length;
      if (got > 2 * MiB) break; // destroys the stream
    }
    expect(stream.destroyed).toBe(true);
    const events = env.host.events.list({ sandbox: s.id, limit: 5 });
    expect(events.some((e) => e.kind === "file.read" && e.details.cancelled === true)).toBe(true);
    const many = await Promise.all(
      Array.from({ length: 200 }, (_, i) => s.files.read("/work/notes/a.txt").then(() => i)),
    );
    expect(many).toHaveLength(200);
  });

  it("a recursive remove of a large tree runs beside the loop, not in it", async () => {
    await sh(
      "mkdir -p /work/huge/a /work/huge/b && cd /work/huge && for i in $(seq 1 10000); do :> a/f$i; :> b/g$i; done",
    );
    const client = s.sandbox.fileClient();
    let removing = true;
    const waits: number[] = [];
    const probe = (async () => {
      while (removing) {
        const t = performance.now();
        await client.fileStat("/work", false);
        waits.push(performance.now() - t);
      }
    })();
    const t0 = performance.now();
    await s.files.remove("/work/huge", { recursive: true });
    const took = performance.now() - t0;
    removing = false;
    await probe;
    expect(await s.files.exists("/work/huge")).toBe(false);
    // Done in the loop, one stat would have waited for the whole removal.
    expect(waits.length).toBeGreaterThan(10);
    expect(Math.max(...waits)).toBeLessThan(took / 2);
    const last = env.host.events.list({ sandbox: s.id, limit: 2 })[0]!;
    expect(last).toMatchObject({ kind: "file.remove", outcome: "ok" });
    expect(last.details.entries).toBe(20_003);
  });

  it("a failed upload source cancels the write and leaves nothing", async () => {
    async function* broken() {
      yield Buffer.alloc(100_000);
      throw new Error("source broke");
    }
    await expect(s.files.write("/work/broken.bin", broken())).rejects.toThrow(/source broke/);
    expect(await sh("ls -A /work | grep -c corral-write || true")).toBe("0\n");
    expect(await s.files.exists("/work/broken.bin")).toBe(false);
  });

  it("file operations keep the session from idling out; an ended session refuses them", async () => {
    const brief = await session({}, { idleTtlMs: 1500 });
    await brief.files.write("/tmp/f", "x");
    await new Promise((r) => setTimeout(r, 1000));
    await brief.files.stat("/tmp/f"); // activity: the idle timer restarts
    await new Promise((r) => setTimeout(r, 1000));
    expect(brief.endReason).toBeNull();
    await brief.destroy();
    const e = await failure(brief.files.read("/tmp/f"));
    expect(e.code).toBe("not_found");
    expect(e.message).toMatch(/has ended/);
  });
});

describe("files: user code cannot reach the supervisor that serves them", () => {
  // Covered in isolation.test.ts: /proc/1 is non-dumpable (environ "Permission denied"),
  // and no socket is reachable by path (runtime-sockets). Here: ptrace, /proc/1/fd, the
  // descriptors user code holds, and a forged frame attempt whose caller still gets the
  // real result.
  it("ptrace(ATTACH, 1) and /proc/1/fd/* fail; only fds 0-2 exist; the real result comes back", async () => {
    const r = await s.commands.run([
      "python3",
      "-c",
      [
        "import ctypes, os, socket, sys",
        "libc = ctypes.CDLL(None, use_errno=True)",
        "print('ptrace', libc.ptrace(16, 1, 0, 0), os.strerror(ctypes.get_errno()))",
        // The numbers in /proc/1/fd can be listed (the directory belongs to the
        // namespace's root); no entry can be opened or read as a link.
        "print('listed', len(os.listdir('/proc/1/fd')) > 3)",
        "try: print('LINK', os.readlink('/proc/1/fd/3'))",
        "except OSError as e: print('readlink /proc/1/fd/3', e.strerror)",
        "for p in ('/proc/1/fd/3', '/proc/1/fd/0', '/proc/1/mem'):",
        "    try: open(p, 'rb'); print('OPENED', p)",
        "    except OSError as e: print(p, e.strerror)",
        "print('fds', sorted(int(f) for f in os.listdir('/proc/self/fd') if int(f) > 2 and os.path.exists(f'/proc/self/fd/{f}') and not os.readlink(f'/proc/self/fd/{f}').startswith('/proc')))",
        "frame = bytes([0,0,0,0, 0x16, 0,0,0,0])  # SHUTDOWN",
        "sent = 0",
        "for fd in range(3, 64):",
        "    try: os.write(fd, frame); sent += 1",
        "    except OSError: pass",
        "for path in ('/run/corral.sock', '/.corral/ctl.sock', '/ctl.sock'):",
        "    try: s = socket.socket(socket.AF_UNIX); s.connect(path); s.send(frame); sent += 1",
        "    except OSError: pass",
        "print('sent', sent)",
        "sys.exit(7)",
      ].join("\n"),
    ]);
    expect(r.stdout.text).toBe(
      [
        "ptrace -1 Operation not permitted",
        "listed True",
        "readlink /proc/1/fd/3 Permission denied",
        "/proc/1/fd/3 Permission denied",
        "/proc/1/fd/0 Permission denied",
        "/proc/1/mem Permission denied",
        "fds []",
        "sent 0",
        "",
      ].join("\n"),
    );
    expect(r.exitCode).toBe(7);
    expect(await s.files.read("/etc/hostname")).toBe("sandbox\n");
  });
});

/** A raw connection to a supervisor: frames out as given, frames in as they come. */
async function rawConnection(socketPath: string) {
  const sock = await new Promise<net.Socket>((resolve, reject) => {
    const c = net.createConnection(socketPath, () => resolve(c));
    c.once("error", reject);
  });
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  let wake: (() => void) | null = null;
  let closed = false;
  sock.on("data", (d: Buffer) => {
    frames.push(...decoder.push(d));
    wake?.();
  });
  sock.on("close", () => {
    closed = true;
    wake?.();
  });
  return {
    send: (type: number, channel: number, payload?: Buffer) =>
      sock.write(encodeFrame(type, channel, payload)),
    sendRaw: (bytes: Buffer) => sock.write(bytes),
    /** The frames on `channel` up to one of type `until` (or ERROR). */
    async until(channel: number, until: number): Promise<Frame[]> {
      const deadline = Date.now() + 5000;
      for (;;) {
        const end = frames.findIndex(
          (f) => f.channel === channel && (f.type === until || f.type === Ev.ERROR),
        );
        if (end >= 0) {
          const mine = frames.filter((f, i) => i <= end && f.channel === channel);
          for (let i = frames.length - 1; i >= 0; i--)
            if (i <= end && frames[i]!.channel === channel) frames.splice(i, 1);
          return mine;
        }
        if (closed || Date.now() > deadline) throw new Error(`no answer on channel ${channel}`);
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 100);
        });
      }
    },
    closed: () =>
      new Promise<boolean>((resolve) => {
        if (closed) return resolve(true);
        sock.once("close", () => resolve(true));
        setTimeout(() => resolve(closed), 3000);
      }),
    close: () => sock.destroy(),
  };
}

describe("files: the supervisor's side of the protocol", () => {
  it("confines paths the host did not normalise, refuses malformed requests, survives", async () => {
    const sb = await Sandbox.create(env.host, { image: env.image, limits: { ...DEFAULT_LIMITS } });
    try {
      // A new connection takes the sandbox over from its client.
      const c = await rawConnection(sb.paths.socket);
      const err = (frames: Frame[]) => {
        const last = frames.at(-1)!;
        expect(last.type).toBe(Ev.ERROR);
        return decodeError(last.payload);
      };
      // ".." and absolute symlinks stay inside, whatever the host sends.
      c.send(Req.FILE_READ, 1, encodeFileRead("/tmp/../../../../etc/hostname", 1 << 20, 1 << 20));
      const read = await c.until(1, Ev.FILE_DONE);
      expect(read.map((f) => f.type)).toEqual([Ev.FILE_INFO, Ev.FILE_DATA, Ev.FILE_DONE]);
      expect(read[1]!.payload.toString()).toBe("sandbox\n");
      expect(decodeFileDone(read[2]!.payload)).toBe(8);
      c.send(Req.FILE_READ, 2, encodeFileRead("/work/../proc/self/environ", 1 << 20, 1 << 20));
      expect(err(await c.until(2, Ev.FILE_DONE)).errno).toBe(constants.errno.EXDEV);
      // Well-formed frames with invalid contents: an ERROR each, the connection stays.
      const cases: [number, number, Buffer, number, RegExp][] = [
        [
          Req.FILE_STAT,
          3,
          Buffer.concat([u32(2), Buffer.from("/x")]),
          constants.errno.EINVAL,
          /flags/,
        ],
        [
          Req.FILE_STAT,
          4,
          Buffer.concat([u32(0), Buffer.from("rel")]),
          constants.errno.EINVAL,
          /absolute/,
        ],
        [
          Req.FILE_STAT,
          5,
          Buffer.concat([u32(0), Buffer.from("/a\0b")]),
          constants.errno.EINVAL,
          /invalid path/,
        ],
        [
          Req.FILE_STAT,
          6,
          Buffer.concat([u32(0), Buffer.alloc(4096, 0x61)]),
          constants.errno.EINVAL,
          /invalid path/,
        ],
        [Req.FILE_LIST, 7, encodeFileList("/", 0), constants.errno.EINVAL, /depth/],
        [Req.FILE_STAT, 0, encodeFileStat("/", false), constants.errno.EINVAL, /non-zero channel/],
        [0x3f, 8, Buffer.alloc(0), constants.errno.EINVAL, /unknown request type 0x3f/],
      ];
      for (const [type, channel, payload, errno, message] of cases) {
        c.send(type, channel, payload);
        const e = err(await c.until(channel, Ev.FILE_INFO));
        expect([channel, e.errno]).toEqual([channel, errno]);
        expect(e.message).toMatch(message);
      }
      // Data for a write that never began, credit for a read that ended: dropped silently.
      c.send(Req.FILE_CHUNK, 9, Buffer.from("stray"));
      c.send(Req.FILE_CREDIT, 1, u32(100));
      c.send(Req.FILE_STAT, 10, encodeFileStat("/etc", false));
      expect((await c.until(10, Ev.FILE_INFO)).map((f) => f.type)).toEqual([Ev.FILE_INFO]);
      // A payload shorter than its fixed fields is malformed: the connection is closed.
      c.send(Req.FILE_READ, 11, Buffer.alloc(5));
      expect(await c.closed()).toBe(true);
      // The supervisor lives on and serves the next connection.
      const again = await rawConnection(sb.paths.socket);
      again.send(Req.HELLO, 0, u32(1));
      expect((await again.until(0, Ev.HELLO_OK))[0]!.type).toBe(Ev.HELLO_OK);
      again.send(Req.FILE_STAT, 1, encodeFileStat("/work", false));
      expect((await again.until(1, Ev.FILE_INFO))[0]!.type).toBe(Ev.FILE_INFO);
      again.close();
    } finally {
      await sb.destroy();
    }
  });
});
