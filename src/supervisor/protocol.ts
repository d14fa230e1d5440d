/**
 * The supervisor wire protocol, version 1 (docs/protocol.md): pure encoders and an
 * incremental frame decoder. Big-endian integers; a frame is u32 payload length, u8 type,
 * u32 channel, payload.
 */

export const PROTOCOL_VERSION = 1;
export const HEADER_SIZE = 9;
/** The supervisor closes the connection on a larger frame; the host never sends one. */
export const MAX_PAYLOAD = 16 * 1024 * 1024;

export const Req = {
  HELLO: 0x01,
  PROBE: 0x02,
  SPAWN: 0x10,
  STDIN: 0x11,
  STDIN_CLOSE: 0x12,
  SIGNAL: 0x13,
  WRITE_FILE: 0x14,
  KILL_ALL: 0x15,
  SHUTDOWN: 0x16,
  CTX_START: 0x20,
  CTX_EXEC: 0x21,
  CTX_STOP: 0x22,
} as const;

export const Ev = {
  HELLO_OK: 0x81,
  PROBE_REPORT: 0x82,
  STARTED: 0x90,
  OK: 0x91,
  STDOUT: 0x92,
  STDERR: 0x93,
  EXIT: 0x94,
  CTX_MSG: 0x95,
  CTX_DONE: 0x96,
  CTX_EXIT: 0x97,
  ERROR: 0xa0,
} as const;

/** CTX_DONE flags. */
export const DONE_TIMED_OUT = 1;
export const DONE_KERNEL_LOST = 2;
export const DONE_SANDBOX_KILLED = 4;

export const SPAWN_STDIN_PIPE = 1;

export interface Frame {
  type: number;
  channel: number;
  payload: Buffer;
}

export function encodeFrame(
  type: number,
  channel: number,
  payload: Buffer = Buffer.alloc(0),
): Buffer {
  if (payload.length > MAX_PAYLOAD)
    throw new RangeError(`frame payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  const header = Buffer.alloc(HEADER_SIZE);
  header.writeUInt32BE(payload.length, 0);
  header.writeUInt8(type, 4);
  header.writeUInt32BE(channel >>> 0, 5);
  return Buffer.concat([header, payload]);
}

export function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value >>> 0, 0);
  return b;
}

function cstring(s: string): Buffer {
  if (s.includes("\0")) throw new RangeError("strings sent to the supervisor cannot contain NUL");
  return Buffer.from(`${s}\0`, "utf8");
}

export interface SpawnPayload {
  argv: readonly string[];
  env: Readonly<Record<string, string>>;
  cwd: string;
  timeoutMs: number;
  stdinPipe: boolean;
}

/** The header words of SPAWN and CTX_START differ; the strings that follow do not. */
function encodeExecStrings(
  word0: number,
  word1: number,
  req: { argv: readonly string[]; env: Readonly<Record<string, string>>; cwd: string },
): Buffer {
  const env = Object.entries(req.env).map(([k, v]) => {
    if (k.length === 0 || k.includes("="))
      throw new RangeError(`invalid environment variable name: ${JSON.stringify(k)}`);
    return `${k}=${v}`;
  });
  if (req.argv.length === 0 || req.argv.length > 0xffff || env.length > 0xffff) {
    throw new RangeError("argv must have 1 to 65535 entries and env at most 65535");
  }
  const head = Buffer.alloc(12);
  head.writeUInt32BE(word0 >>> 0, 0);
  head.writeUInt32BE(word1 >>> 0, 4);
  head.writeUInt16BE(req.argv.length, 8);
  head.writeUInt16BE(env.length, 10);
  return Buffer.concat([head, cstring(req.cwd), ...req.argv.map(cstring), ...env.map(cstring)]);
}

function clampMs(ms: number): number {
  return Math.max(0, Math.min(0xffffffff, Math.round(ms)));
}

export function encodeSpawn(req: SpawnPayload): Buffer {
  return encodeExecStrings(req.stdinPipe ? SPAWN_STDIN_PIPE : 0, clampMs(req.timeoutMs), req);
}

export interface ContextStartPayload {
  argv: readonly string[];
  env: Readonly<Record<string, string>>;
  cwd: string;
  /** Sent to the kernel when a call passes its deadline (0: none, the sweeps only). */
  interruptSignal: number;
}

export function encodeContextStart(req: ContextStartPayload): Buffer {
  return encodeExecStrings(0, req.interruptSignal, req);
}

export function encodeContextExec(timeoutMs: number, request: Buffer): Buffer {
  return Buffer.concat([u32(clampMs(timeoutMs)), request]);
}

export interface CallDone {
  timedOut: boolean;
  /** The kernel was killed or died: the context's state is gone. */
  kernelLost: boolean;
  /** The call's processes outlived the sweeps: the supervisor is killing the sandbox. */
  sandboxKilled: boolean;
  /** How many of the call's processes the sweeps killed. */
  swept: number;
  wallUs: number;
}

export function decodeCallDone(p: Buffer): CallDone {
  if (p.length !== 16) throw new RangeError(`CTX_DONE payload of ${p.length} bytes (expected 16)`);
  const flags = p.readUInt32BE(0);
  return {
    timedOut: (flags & DONE_TIMED_OUT) !== 0,
    kernelLost: (flags & DONE_KERNEL_LOST) !== 0,
    sandboxKilled: (flags & DONE_SANDBOX_KILLED) !== 0,
    swept: p.readUInt32BE(4),
    wallUs: Number(p.readBigUInt64BE(8)),
  };
}

export function encodeWriteFile(file: string, data: Buffer, mode: number): Buffer {
  const name = Buffer.from(file, "utf8");
  if (name.length === 0 || name.length > 4095 || name.includes(0))
    throw new RangeError(`invalid path: ${file}`);
  const head = Buffer.alloc(6);
  head.writeUInt32BE(mode, 0);
  head.writeUInt16BE(name.length, 4);
  return Buffer.concat([head, name, data]);
}

export interface ExitInfo {
  how: "exited" | "signaled";
  /** Exit status, or the signal number when `how` is "signaled". */
  code: number;
  timedOut: boolean;
  wallUs: number;
  userUs: number;
  sysUs: number;
  maxRssKiB: number;
}

export function decodeExit(p: Buffer): ExitInfo {
  if (p.length !== 40) throw new RangeError(`EXIT payload of ${p.length} bytes (expected 40)`);
  return {
    how: p.readUInt8(0) === 1 ? "signaled" : "exited",
    timedOut: p.readUInt8(1) === 1,
    code: p.readInt32BE(4),
    wallUs: Number(p.readBigUInt64BE(8)),
    userUs: Number(p.readBigUInt64BE(16)),
    sysUs: Number(p.readBigUInt64BE(24)),
    maxRssKiB: Number(p.readBigUInt64BE(32)),
  };
}

export function decodeError(p: Buffer): { errno: number; message: string } {
  if (p.length < 4) return { errno: 0, message: "malformed ERROR frame" };
  return { errno: p.readUInt32BE(0), message: p.subarray(4).toString("utf8") };
}

export function decodeProbe(p: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of p.toString("utf8").split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

/** Accumulates bytes from the socket and yields whole frames. */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const frames: Frame[] = [];
    let off = 0;
    while (this.buf.length - off >= HEADER_SIZE) {
      const len = this.buf.readUInt32BE(off);
      if (len > MAX_PAYLOAD) throw new RangeError(`frame of ${len} bytes from the supervisor`);
      if (this.buf.length - off < HEADER_SIZE + len) break;
      frames.push({
        type: this.buf.readUInt8(off + 4),
        channel: this.buf.readUInt32BE(off + 5),
        payload: Buffer.from(this.buf.subarray(off + HEADER_SIZE, off + HEADER_SIZE + len)),
      });
      off += HEADER_SIZE + len;
    }
    this.buf = off === this.buf.length ? Buffer.alloc(0) : this.buf.subarray(off);
    return frames;
  }
}
