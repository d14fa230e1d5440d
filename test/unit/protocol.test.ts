import { constants as osConstants } from "node:os";
import { describe, expect, it } from "vitest";
import { spawnFailure } from "../../src/supervisor/client.js";
import {
  decodeExit,
  decodeFileDone,
  decodeFileRecords,
  decodeProbe,
  encodeFileCommit,
  encodeFileList,
  encodeFileMkdir,
  encodeFileRead,
  encodeFileRemove,
  encodeFileRename,
  encodeFileStat,
  encodeFileWrite,
  encodeFrame,
  encodeSpawn,
  encodeWriteFile,
  FrameDecoder,
  MAX_PAYLOAD,
} from "../../src/supervisor/protocol.js";

describe("supervisor protocol", () => {
  it("frames are length, type, channel, payload, big-endian", () => {
    const f = encodeFrame(0x10, 0x01020304, Buffer.from("ab"));
    expect([...f]).toEqual([0, 0, 0, 2, 0x10, 1, 2, 3, 4, 0x61, 0x62]);
  });

  it("decodes frames split across arbitrary chunks", () => {
    const stream = Buffer.concat([
      encodeFrame(0x92, 7, Buffer.from("hello")),
      encodeFrame(0x91, 8),
    ]);
    for (let cut = 0; cut <= stream.length; cut++) {
      const d = new FrameDecoder();
      const frames = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
      expect(frames.map((f) => [f.type, f.channel, f.payload.toString()])).toEqual([
        [0x92, 7, "hello"],
        [0x91, 8, ""],
      ]);
    }
  });

  it("rejects an oversized frame from the supervisor", () => {
    const header = Buffer.alloc(9);
    header.writeUInt32BE(MAX_PAYLOAD + 1, 0);
    expect(() => new FrameDecoder().push(header)).toThrow(/frame of/);
  });

  it("encodes SPAWN with NUL-terminated cwd, argv and env", () => {
    const p = encodeSpawn({
      argv: ["sh", "-c", "x"],
      env: { A: "1" },
      cwd: "/work",
      timeoutMs: 1500,
      stdinPipe: true,
    });
    expect(p.readUInt32BE(0)).toBe(1);
    expect(p.readUInt32BE(4)).toBe(1500);
    expect(p.readUInt16BE(8)).toBe(3);
    expect(p.readUInt16BE(10)).toBe(1);
    expect(p.subarray(12).toString()).toBe("/work\0sh\0-c\0x\0A=1\0");
  });

  it("refuses strings that would corrupt the framing", () => {
    expect(() =>
      encodeSpawn({ argv: ["a\0b"], env: {}, cwd: "/", timeoutMs: 0, stdinPipe: false }),
    ).toThrow(/NUL/);
    expect(() =>
      encodeSpawn({ argv: [], env: {}, cwd: "/", timeoutMs: 0, stdinPipe: false }),
    ).toThrow(/argv/);
    expect(() =>
      encodeSpawn({ argv: ["x"], env: { "A=B": "1" }, cwd: "/", timeoutMs: 0, stdinPipe: false }),
    ).toThrow(/name/);
    expect(() => encodeWriteFile("", Buffer.alloc(0), 0o644)).toThrow(/path/);
  });

  it("puts SPAWN's output cap between its header and its strings, under its own flag", () => {
    const base = { argv: ["sh"], env: {}, cwd: "/w", timeoutMs: 0, stdinPipe: true };
    const p = encodeSpawn({ ...base, outputCapBytes: 2 ** 40 + 3 });
    expect(p.readUInt32BE(0)).toBe(1 | 2);
    expect(p.readBigUInt64BE(12)).toBe(2n ** 40n + 3n);
    expect(p.subarray(20).toString()).toBe("/w\0sh\0");
    // No cap (or 0): no flag, no field.
    for (const q of [encodeSpawn(base), encodeSpawn({ ...base, outputCapBytes: 0 })]) {
      expect(q.readUInt32BE(0)).toBe(1);
      expect(q.subarray(12).toString()).toBe("/w\0sh\0");
    }
    for (const bad of [-1, 1.5, Number.POSITIVE_INFINITY, Number.NaN]) {
      expect(() => encodeSpawn({ ...base, outputCapBytes: bad }), String(bad)).toThrow(/cap/);
    }
  });

  it("decodes EXIT and PROBE_REPORT", () => {
    const ev = Buffer.alloc(56);
    ev.writeUInt8(1, 0);
    ev.writeUInt8(1, 1);
    ev.writeInt32BE(9, 4);
    ev.writeBigUInt64BE(1234n, 8);
    ev.writeBigUInt64BE(5n, 16);
    ev.writeBigUInt64BE(6n, 24);
    ev.writeBigUInt64BE(2048n, 32);
    ev.writeBigUInt64BE(2n ** 33n, 40);
    ev.writeBigUInt64BE(7n, 48);
    expect(decodeExit(ev)).toEqual({
      how: "signaled",
      timedOut: true,
      code: 9,
      wallUs: 1234,
      userUs: 5,
      sysUs: 6,
      maxRssKiB: 2048,
      stdoutBytes: 2 ** 33,
      stderrBytes: 7,
    });
    expect(() => decodeExit(Buffer.alloc(3))).toThrow();
    expect(() => decodeExit(Buffer.alloc(40))).toThrow();
    expect(decodeProbe(Buffer.from("a=1\nuid_map=0 1 2;3 4 5\n\nbad\n"))).toEqual({
      a: "1",
      uid_map: "0 1 2;3 4 5",
    });
  });

  it("decodes large frames that arrive in many small reads, once each", () => {
    const big = Buffer.alloc(256 * 1024, 0x61);
    const stream = Buffer.concat([
      encodeFrame(0x9a, 3, big),
      encodeFrame(0x9b, 3, Buffer.alloc(8)),
      encodeFrame(0x9a, 4, Buffer.from("x")),
    ]);
    for (const size of [1, 7, 9, 4096, 65536, stream.length]) {
      const d = new FrameDecoder();
      const frames = [];
      for (let off = 0; off < stream.length; off += size)
        frames.push(...d.push(stream.subarray(off, off + size)));
      expect(frames.map((f) => [f.type, f.channel, f.payload.length])).toEqual([
        [0x9a, 3, big.length],
        [0x9b, 3, 8],
        [0x9a, 4, 1],
      ]);
      expect(frames[0]!.payload.equals(big)).toBe(true);
    }
  });
});

describe("file API payloads", () => {
  it("FILE_STAT, FILE_LIST, FILE_READ: fixed words, then the path", () => {
    expect([...encodeFileStat("/a", true)]).toEqual([0, 0, 0, 1, 0x2f, 0x61]);
    expect([...encodeFileStat("/a", false)]).toEqual([0, 0, 0, 0, 0x2f, 0x61]);
    expect([...encodeFileList("/", 3)]).toEqual([0, 0, 0, 3, 0, 0, 0, 0, 0x2f]);
    const r = encodeFileRead("/x", 2 ** 40 + 5, 4096);
    expect(r.readBigUInt64BE(0)).toBe(2n ** 40n + 5n);
    expect(r.readUInt32BE(8)).toBe(4096);
    expect(r.subarray(12).toString()).toBe("/x");
  });

  it("FILE_WRITE carries flags, mode and cap; FILE_COMMIT the byte count", () => {
    const w = encodeFileWrite("/w/ü", { mode: 0o640, keepMode: true, parents: true, maxBytes: 9 });
    expect(w.readUInt32BE(0)).toBe(3);
    expect(w.readUInt32BE(4)).toBe(0o640);
    expect(w.readBigUInt64BE(8)).toBe(9n);
    expect(w.subarray(16).toString()).toBe("/w/ü");
    const plain = encodeFileWrite("/f", {
      mode: 0o644,
      keepMode: false,
      parents: false,
      maxBytes: 0,
    });
    expect(plain.readUInt32BE(0)).toBe(0);
    expect(encodeFileCommit(20 << 20).readBigUInt64BE(0)).toBe(BigInt(20 << 20));
  });

  it("FILE_MKDIR, FILE_REMOVE, FILE_RENAME", () => {
    expect([...encodeFileMkdir("/d", true, 0o700)]).toEqual([
      0, 0, 0, 1, 0, 0, 1, 0xc0, 0x2f, 0x64,
    ]);
    expect([...encodeFileRemove("/d", true)]).toEqual([0, 0, 0, 1, 0x2f, 0x64]);
    const mv = encodeFileRename("/a", "/bb", true);
    expect(mv.readUInt32BE(0)).toBe(1);
    expect(mv.readUInt16BE(4)).toBe(2);
    expect(mv.subarray(6).toString()).toBe("/a/bb");
  });

  it("refuses paths the supervisor would refuse, before sending", () => {
    for (const bad of ["", "rel", "/a\0b", `/${"x".repeat(4095)}`]) {
      expect(() => encodeFileStat(bad, false)).toThrow(/invalid path/);
    }
    expect(() => encodeFileRead("/x", -1, 1)).toThrow(/u64/);
    expect(() => encodeFileRename("/a", "b", false)).toThrow(/invalid path/);
    expect(encodeFileStat(`/${"x".repeat(4094)}`, false)).toHaveLength(4 + 4095);
  });

  function record(
    type: number,
    name: string,
    target: string,
    fields: { mode: number; uid: number; gid: number; size: bigint; mtimeNs: bigint },
  ): Buffer {
    const n = Buffer.from(name);
    const t = Buffer.from(target);
    const head = Buffer.alloc(33);
    head.writeUInt8(type, 0);
    head.writeUInt16BE(n.length, 1);
    head.writeUInt16BE(t.length, 3);
    head.writeUInt32BE(fields.mode, 5);
    head.writeUInt32BE(fields.uid, 9);
    head.writeUInt32BE(fields.gid, 13);
    head.writeBigUInt64BE(fields.size, 17);
    head.writeBigInt64BE(fields.mtimeNs, 25);
    return Buffer.concat([head, n, t]);
  }

  it("decodes FILE_INFO and FILE_ENTRIES records", () => {
    const f = {
      mode: 0o100644,
      uid: 0,
      gid: 0,
      size: 20n << 20n,
      mtimeNs: 1_700_000_000_123_456_789n,
    };
    const payload = Buffer.concat([
      record(1, "dir with space/ü.txt", "", f),
      record(2, "d", "", { ...f, mode: 0o40755, size: 4096n }),
      record(3, "s", "/etc/shadow", { ...f, mode: 0o120777, size: 11n }),
      record(0, "p", "", { ...f, mode: 0o10644, size: 0n, uid: 65534, gid: 65534 }),
      record(9, "?", "", f),
    ]);
    const got = decodeFileRecords(payload);
    expect(got.map((r) => [r.type, r.name, r.target])).toEqual([
      ["file", "dir with space/ü.txt", null],
      ["dir", "d", null],
      ["symlink", "s", "/etc/shadow"],
      ["other", "p", null],
      ["other", "?", null],
    ]);
    expect(got[0]).toMatchObject({ mode: 0o100644, size: 20 << 20, mtimeNs: f.mtimeNs });
    expect(got[3]).toMatchObject({ uid: 65534, gid: 65534 });
    expect(decodeFileRecords(Buffer.alloc(0))).toEqual([]);
  });

  it("refuses a truncated record and a malformed FILE_DONE", () => {
    const one = record(1, "name", "", { mode: 0, uid: 0, gid: 0, size: 0n, mtimeNs: 0n });
    for (let cut = 1; cut < one.length; cut++) {
      expect(() => decodeFileRecords(one.subarray(0, cut))).toThrow(/truncated/);
    }
    const done = Buffer.alloc(8);
    done.writeBigUInt64BE(7n);
    expect(decodeFileDone(done)).toBe(7);
    expect(() => decodeFileDone(Buffer.alloc(4))).toThrow(/FILE_DONE/);
  });
});

describe("spawnFailure", () => {
  const { ENOENT, EACCES, ENOEXEC, E2BIG } = osConstants.errno;
  it.each([
    [
      ENOENT,
      "exec nosuch: No such file or directory",
      "nosuch",
      "program_not_found",
      "program nosuch not found in the image (looked up in its PATH)",
    ],
    [
      ENOENT,
      "exec /bin/sh: No such file or directory",
      "/bin/sh",
      "program_not_found",
      "program /bin/sh not found in the image",
    ],
    [
      EACCES,
      "exec /work: Permission denied",
      "/work",
      "program_not_executable",
      "program /work is not executable in the image (permission denied)",
    ],
    [
      ENOEXEC,
      "exec /x: Exec format error",
      "/x",
      "program_not_executable",
      "program /x is not executable in the image (exec format error)",
    ],
    [
      E2BIG,
      "exec /x: Argument list too long",
      "/x",
      "runtime_failed",
      "exec /x: Argument list too long",
    ],
    [
      ENOENT,
      "chdir /nowhere: No such file or directory",
      "/x",
      "runtime_failed",
      "chdir /nowhere: No such file or directory",
    ],
  ])("errno %d, %j", (errno, message, program, code, text) => {
    const err = spawnFailure(errno, message, program);
    expect(err).toMatchObject({ code, message: text, errno });
  });
});
