import { describe, expect, it } from "vitest";
import {
  decodeExit,
  decodeProbe,
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

  it("decodes EXIT and PROBE_REPORT", () => {
    const ev = Buffer.alloc(40);
    ev.writeUInt8(1, 0);
    ev.writeUInt8(1, 1);
    ev.writeInt32BE(9, 4);
    ev.writeBigUInt64BE(1234n, 8);
    ev.writeBigUInt64BE(5n, 16);
    ev.writeBigUInt64BE(6n, 24);
    ev.writeBigUInt64BE(2048n, 32);
    expect(decodeExit(ev)).toEqual({
      how: "signaled",
      timedOut: true,
      code: 9,
      wallUs: 1234,
      userUs: 5,
      sysUs: 6,
      maxRssKiB: 2048,
    });
    expect(() => decodeExit(Buffer.alloc(3))).toThrow();
    expect(decodeProbe(Buffer.from("a=1\nuid_map=0 1 2;3 4 5\n\nbad\n"))).toEqual({
      a: "1",
      uid_map: "0 1 2;3 4 5",
    });
  });
});
