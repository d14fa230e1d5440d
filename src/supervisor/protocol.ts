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
  FILE_STAT: 0x30,
  FILE_LIST: 0x31,
  FILE_READ: 0x32,
  FILE_CREDIT: 0x33,
  FILE_WRITE: 0x34,
  FILE_CHUNK: 0x35,
  FILE_COMMIT: 0x36,
  FILE_CANCEL: 0x37,
  FILE_MKDIR: 0x38,
  FILE_REMOVE: 0x39,
  FILE_RENAME: 0x3a,
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
  FILE_INFO: 0x98,
  FILE_ENTRIES: 0x99,
  FILE_DATA: 0x9a,
  FILE_DONE: 0x9b,
  ERROR: 0xa0,
} as const;

/** CTX_DONE flags. */
export const DONE_TIMED_OUT = 1;
export const DONE_KERNEL_LOST = 2;
export const DONE_SANDBOX_KILLED = 4;

export const SPAWN_STDIN_PIPE = 1;
/** SPAWN carries a u64 output cap: the supervisor sends at most that much of each stream. */
export const SPAWN_OUTPUT_CAP = 2;

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
  /** Bytes of each stream to send at most (the rest is counted, not sent); 0 or none: all. */
  outputCapBytes?: number;
}

/** The header words of SPAWN and CTX_START differ; the strings that follow do not. */
function encodeExecStrings(
  word0: number,
  word1: number,
  req: { argv: readonly string[]; env: Readonly<Record<string, string>>; cwd: string },
  /** Fields between the header and the strings (SPAWN's output cap). */
  extra: Buffer = Buffer.alloc(0),
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
  return Buffer.concat([
    head,
    extra,
    cstring(req.cwd),
    ...req.argv.map(cstring),
    ...env.map(cstring),
  ]);
}

/**
 * A timeout on the wire: whole ms, 0 meaning none. A positive fraction rounds up, never
 * down to 0 (which would turn a 0.4 ms timeout into no timeout at all).
 */
export function clampMs(ms: number): number {
  if (!(ms > 0)) return 0;
  return Math.min(0xffffffff, Math.ceil(ms));
}

export function encodeSpawn(req: SpawnPayload): Buffer {
  const cap = req.outputCapBytes ?? 0;
  if (!Number.isSafeInteger(cap) || cap < 0) throw new RangeError(`bad output cap: ${cap}`);
  const flags = (req.stdinPipe ? SPAWN_STDIN_PIPE : 0) | (cap > 0 ? SPAWN_OUTPUT_CAP : 0);
  const extra = Buffer.alloc(cap > 0 ? 8 : 0);
  if (cap > 0) extra.writeBigUInt64BE(BigInt(cap));
  return encodeExecStrings(flags, clampMs(req.timeoutMs), req, extra);
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

/** FILE_* request flags (docs/protocol.md). */
export const FileFlag = {
  STAT_FOLLOW: 1,
  WRITE_PARENTS: 1,
  WRITE_KEEP_MODE: 2,
  MKDIR_PARENTS: 1,
  REMOVE_RECURSIVE: 1,
  RENAME_NOREPLACE: 1,
} as const;

/** The longest path the supervisor takes (PATH_MAX less its NUL). */
export const MAX_FILE_PATH_BYTES = 4095;

function filePath(file: string): Buffer {
  const b = Buffer.from(file, "utf8");
  if (b.length === 0 || b.length > MAX_FILE_PATH_BYTES || b.includes(0) || b[0] !== 0x2f)
    throw new RangeError(`invalid path for the supervisor: ${JSON.stringify(file)}`);
  return b;
}

function u64(value: number): Buffer {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`not a u64: ${value}`);
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(value), 0);
  return b;
}

export function encodeFileStat(file: string, follow: boolean): Buffer {
  return Buffer.concat([u32(follow ? FileFlag.STAT_FOLLOW : 0), filePath(file)]);
}

export function encodeFileList(file: string, depth: number): Buffer {
  return Buffer.concat([u32(depth), u32(0), filePath(file)]);
}

export function encodeFileRead(file: string, maxBytes: number, window: number): Buffer {
  return Buffer.concat([u64(maxBytes), u32(window), filePath(file)]);
}

export interface FileWritePayload {
  /** Permission bits of the new file (with keepMode: only when there was no file). */
  mode: number;
  /** Keep the permission bits of the regular file being replaced. */
  keepMode: boolean;
  /** Create missing parent directories. */
  parents: boolean;
  maxBytes: number;
}

export function encodeFileWrite(file: string, opts: FileWritePayload): Buffer {
  const flags =
    (opts.parents ? FileFlag.WRITE_PARENTS : 0) | (opts.keepMode ? FileFlag.WRITE_KEEP_MODE : 0);
  return Buffer.concat([u32(flags), u32(opts.mode), u64(opts.maxBytes), filePath(file)]);
}

export function encodeFileCommit(total: number): Buffer {
  return u64(total);
}

export function encodeFileMkdir(file: string, parents: boolean, mode: number): Buffer {
  return Buffer.concat([u32(parents ? FileFlag.MKDIR_PARENTS : 0), u32(mode), filePath(file)]);
}

export function encodeFileRemove(file: string, recursive: boolean): Buffer {
  return Buffer.concat([u32(recursive ? FileFlag.REMOVE_RECURSIVE : 0), filePath(file)]);
}

export function encodeFileRename(from: string, to: string, noReplace: boolean): Buffer {
  const src = filePath(from);
  const head = Buffer.alloc(6);
  head.writeUInt32BE(noReplace ? FileFlag.RENAME_NOREPLACE : 0, 0);
  head.writeUInt16BE(src.length, 4);
  return Buffer.concat([head, src, filePath(to)]);
}

export type FileType = "file" | "dir" | "symlink" | "other";
const FILE_TYPES: readonly FileType[] = ["other", "file", "dir", "symlink"];

/** One FILE_INFO / FILE_ENTRIES record, as the supervisor saw it (lstat-like). */
export interface FileRecord {
  type: FileType;
  /** Relative to the listed directory in FILE_ENTRIES; empty in FILE_INFO. */
  name: string;
  /** The whole st_mode (type and permission bits). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeNs: bigint;
  /** A symlink's target as stored in the link; null for anything else. */
  target: string | null;
}

const ENTRY_HEAD = 33;

/** Decode the records of a FILE_INFO or FILE_ENTRIES payload; a truncated one is an error. */
export function decodeFileRecords(p: Buffer): FileRecord[] {
  const out: FileRecord[] = [];
  let off = 0;
  while (off < p.length) {
    if (p.length - off < ENTRY_HEAD) throw new RangeError("truncated file entry");
    const type = p.readUInt8(off);
    const nameLen = p.readUInt16BE(off + 1);
    const targetLen = p.readUInt16BE(off + 3);
    const end = off + ENTRY_HEAD + nameLen + targetLen;
    if (end > p.length) throw new RangeError("truncated file entry");
    const nameAt = off + ENTRY_HEAD;
    out.push({
      type: FILE_TYPES[type] ?? "other",
      name: p.toString("utf8", nameAt, nameAt + nameLen),
      mode: p.readUInt32BE(off + 5),
      uid: p.readUInt32BE(off + 9),
      gid: p.readUInt32BE(off + 13),
      size: Number(p.readBigUInt64BE(off + 17)),
      mtimeNs: p.readBigInt64BE(off + 25),
      target: type === 3 ? p.toString("utf8", nameAt + nameLen, end) : null,
    });
    off = end;
  }
  return out;
}

export function decodeFileDone(p: Buffer): number {
  if (p.length !== 8) throw new RangeError(`FILE_DONE payload of ${p.length} bytes (expected 8)`);
  return Number(p.readBigUInt64BE(0));
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
  /** Bytes the process wrote to stdout and stderr (sent or not: see SPAWN_OUTPUT_CAP). */
  stdoutBytes: number;
  stderrBytes: number;
}

export function decodeExit(p: Buffer): ExitInfo {
  if (p.length !== 56) throw new RangeError(`EXIT payload of ${p.length} bytes (expected 56)`);
  return {
    how: p.readUInt8(0) === 1 ? "signaled" : "exited",
    timedOut: p.readUInt8(1) === 1,
    code: p.readInt32BE(4),
    wallUs: Number(p.readBigUInt64BE(8)),
    userUs: Number(p.readBigUInt64BE(16)),
    sysUs: Number(p.readBigUInt64BE(24)),
    maxRssKiB: Number(p.readBigUInt64BE(32)),
    stdoutBytes: Number(p.readBigUInt64BE(40)),
    stderrBytes: Number(p.readBigUInt64BE(48)),
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

/**
 * Accumulates bytes from the socket and yields whole frames. Chunks are kept apart until
 * a whole frame is there, so a 256 KiB frame arriving in 64 KiB reads is joined once, not
 * copied again at every read.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private length = 0;
  /** Bytes needed before a frame can be complete: a header, or the pending frame. */
  private need = HEADER_SIZE;

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.length += chunk.length;
    if (this.length < this.need) return [];
    const buf = this.chunks.length === 1 ? chunk : Buffer.concat(this.chunks, this.length);
    const frames: Frame[] = [];
    let off = 0;
    while (buf.length - off >= HEADER_SIZE) {
      const len = buf.readUInt32BE(off);
      if (len > MAX_PAYLOAD) throw new RangeError(`frame of ${len} bytes from the supervisor`);
      if (buf.length - off < HEADER_SIZE + len) break;
      frames.push({
        type: buf.readUInt8(off + 4),
        channel: buf.readUInt32BE(off + 5),
        payload: Buffer.from(buf.subarray(off + HEADER_SIZE, off + HEADER_SIZE + len)),
      });
      off += HEADER_SIZE + len;
    }
    const rest = buf.subarray(off);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.length = rest.length;
    this.need = rest.length >= HEADER_SIZE ? HEADER_SIZE + rest.readUInt32BE(0) : HEADER_SIZE;
    return frames;
  }
}
