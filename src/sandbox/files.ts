/**
 * The file API of a live session (`session.files`), in E2B's shape: read, write, list,
 * stat, exists, mkdir, remove, rename, and streams both ways (upload, download).
 *
 * Every operation is carried out by the sandbox's supervisor, inside the sandbox (see
 * "file API" in corral-supervisor.c and docs/protocol.md): the host validates and
 * normalises the path (src/core/files.ts), sends one typed request, and never touches the
 * sandbox's files by path itself. Each operation is recorded in the event log as
 * `file.<op>` with its path, its byte or entry count and its outcome.
 */
import { Readable } from "node:stream";
import type { Outcome } from "../audit/events.js";
import { asCorralError, CorralError } from "../core/errors.js";
import {
  baseName,
  fileError,
  joinPath,
  parseListDepth,
  parseMode,
  parseReadFormat,
  requireName,
  sandboxPath,
} from "../core/files.js";
import { formatBytes } from "../core/limits.js";
import {
  type FileRecord,
  type SupervisorClient,
  SupervisorRequestError,
} from "../supervisor/client.js";
import type { FileType } from "../supervisor/protocol.js";

export type { FileType } from "../supervisor/protocol.js";

export interface EntryInfo {
  name: string;
  /** Absolute path inside the sandbox. */
  path: string;
  type: FileType;
  size: number;
  /** Permission bits (st_mode & 0o7777). */
  mode: number;
  mtime: Date;
  /** Owner and group as the sandbox sees them (0 is the sandbox's root). */
  uid: number;
  gid: number;
  /** For a symlink: its target, as stored in the link. */
  symlinkTarget?: string;
}

export interface WriteInfo {
  name: string;
  path: string;
  type: "file";
  size: number;
}

/** What write() and upload() take: bytes, text (UTF-8), or a stream of chunks. */
export type WriteData =
  | string
  | Uint8Array
  | ArrayBuffer
  | Readable
  | AsyncIterable<Uint8Array | string>;

export interface WriteOptions {
  /** Permission bits of the file; by default a replaced file keeps its own, a new one gets 0o644. */
  mode?: number;
}

export type FileEventKind =
  | "file.read"
  | "file.write"
  | "file.list"
  | "file.stat"
  | "file.mkdir"
  | "file.remove"
  | "file.rename";

/** What the file API needs from its session. */
export interface FilesHost {
  /** The live sandbox's supervisor; throws once the session has ended. */
  client(): SupervisorClient;
  workdir: string;
  maxFileBytes: number;
  record(kind: FileEventKind, details: Record<string, unknown>, outcome: Outcome): void;
  /** An operation starts (the idle timer pauses); call the returned function when it ends. */
  activity(): () => void;
}

/** Bytes the supervisor may send ahead of what a download's reader consumed. */
const READ_WINDOW = 4 << 20;
/** A download stream buffers this much before it stops granting credit. */
const STREAM_HIGH_WATER = 1 << 20;
/** Paths longer than this are cut short in event details (a hostile 5000-byte path). */
const EVENT_PATH_CHARS = 1024;

function entryFrom(record: FileRecord, path: string): EntryInfo {
  return {
    name: baseName(path) || "/",
    path,
    type: record.type,
    size: record.size,
    mode: record.mode & 0o7777,
    mtime: new Date(Number(record.mtimeNs / 1_000_000n)),
    uid: record.uid,
    gid: record.gid,
    ...(record.target !== null ? { symlinkTarget: record.target } : {}),
  };
}

/** Any failure of a file request, as the CorralError the caller sees. */
function toFileError(err: unknown): CorralError {
  if (err instanceof SupervisorRequestError) return fileError(err.errno, err.message);
  return asCorralError(err);
}

function outcomeOf(err: CorralError): Outcome {
  return err.code === "permission_denied" ? "denied" : "error";
}

function eventPath(p: unknown): unknown {
  return typeof p === "string" && p.length > EVENT_PATH_CHARS
    ? `${p.slice(0, EVENT_PATH_CHARS)}... (${p.length} chars)`
    : p;
}

function isAsyncIterable(x: unknown): x is AsyncIterable<unknown> {
  return (
    typeof x === "object" &&
    x !== null &&
    typeof (x as { [Symbol.asyncIterator]?: unknown })[Symbol.asyncIterator] === "function"
  );
}

function asBuffer(chunk: unknown): Buffer {
  if (typeof chunk === "string") return Buffer.from(chunk, "utf8");
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
  if (chunk instanceof ArrayBuffer) return Buffer.from(chunk);
  throw new CorralError(
    "invalid_argument",
    "data must be a string, bytes (Buffer, Uint8Array, ArrayBuffer) or a stream of them",
  );
}

export class SessionFiles {
  constructor(private readonly host: FilesHost) {}

  private path(p: unknown): string {
    return sandboxPath(p, this.host.workdir);
  }

  private tooLarge(file: string, size: number | null): CorralError {
    const max = this.host.maxFileBytes;
    return new CorralError(
      "too_large",
      size === null
        ? `write ${file}: the data is over the ${formatBytes(max)} cap; nothing was written`
        : `write ${file}: ${size} bytes is over the ${formatBytes(max)} cap; nothing was written`,
      "raise the session's maxFileBytes",
    );
  }

  /**
   * Run one operation: validate, call the supervisor, record the event (also when it
   * failed, with the error), and keep the session from idling out meanwhile.
   */
  private async op<T>(
    kind: FileEventKind,
    details: Record<string, unknown>,
    run: (client: SupervisorClient) => Promise<T>,
    describe: (result: T) => Record<string, unknown> = () => ({}),
  ): Promise<T> {
    const done = this.host.activity();
    try {
      const result = await run(this.host.client());
      this.host.record(kind, { ...details, ...describe(result) }, "ok");
      return result;
    } catch (err) {
      const e = toFileError(err);
      this.host.record(kind, { ...details, error: e.message, code: e.code }, outcomeOf(e));
      throw e;
    } finally {
      done();
    }
  }

  /** A regular file's content: text (UTF-8, the default), bytes, or a stream. */
  read(path: string, opts?: { format?: "text" }): Promise<string>;
  read(path: string, opts: { format: "bytes" }): Promise<Buffer>;
  read(path: string, opts: { format: "stream" }): Promise<Readable>;
  async read(
    path: string,
    opts: { format?: "text" | "bytes" | "stream" } = {},
  ): Promise<string | Buffer | Readable> {
    const format = parseReadFormat(opts.format);
    if (format === "stream") return this.download(path);
    const bytes = await this.op(
      "file.read",
      { path: eventPath(path) },
      async (client) => {
        const file = this.path(path);
        const chunks: Buffer[] = [];
        const h = client.fileRead(file, {
          maxBytes: this.host.maxFileBytes,
          window: READ_WINDOW,
          onData: (c) => {
            chunks.push(c);
            h.credit(c.length);
          },
        });
        await h.info;
        const total = await h.done;
        return Buffer.concat(chunks, total);
      },
      (b) => ({ bytes: b.length }),
    );
    return format === "bytes" ? bytes : bytes.toString("utf8");
  }

  /**
   * A regular file as a Readable. Resolves once the file is open (so a missing file, a
   * FIFO or a path in /proc rejects here, not in the stream); the supervisor then sends
   * only as much as the reader consumes, plus a window.
   */
  async download(path: string): Promise<Readable> {
    const end = this.host.activity();
    const details = { path: eventPath(path), stream: true };
    let ended = false;
    let complete = false;
    const finish = (err: CorralError | null, bytes: number) => {
      if (ended) return;
      ended = true;
      end();
      if (err) {
        const failed = { ...details, bytes, error: err.message, code: err.code };
        this.host.record("file.read", failed, outcomeOf(err));
      } else {
        const cancelled = complete ? {} : { cancelled: true };
        this.host.record("file.read", { ...details, bytes, ...cancelled }, "ok");
      }
    };
    let sent = 0;
    let owed = 0;
    let stream: Readable | null = null;
    try {
      const file = this.path(path);
      const h = this.host.client().fileRead(file, {
        maxBytes: this.host.maxFileBytes,
        window: READ_WINDOW,
        onData: (c) => {
          sent += c.length;
          if (!stream || stream.destroyed) return;
          if (stream.push(c)) h.credit(c.length);
          else owed += c.length;
        },
      });
      stream = new Readable({
        highWaterMark: STREAM_HIGH_WATER,
        read: () => {
          if (owed > 0) h.credit(owed);
          owed = 0;
        },
        destroy: (err, cb) => {
          // Anything not finished by now was stopped by the reader: a cancellation.
          h.cancel();
          finish(null, sent);
          cb(err);
        },
      });
      const s = stream;
      h.done.then(
        () => {
          complete = true;
          finish(null, sent);
          s.push(null);
        },
        (err) => {
          const e = toFileError(err);
          finish(e, sent);
          if (!s.destroyed) s.destroy(e);
        },
      );
      await h.info;
      return s;
    } catch (err) {
      const e = toFileError(err);
      stream?.destroy();
      finish(e, 0);
      throw e;
    }
  }

  /**
   * Write a file, creating missing parent directories. The bytes go to a new file next to
   * the target, renamed over it at the end: readers never see half a file, a hard link at
   * the target keeps its old content, and a failed or oversized write leaves nothing.
   * A symlink at the target is followed, inside the sandbox.
   */
  async write(path: string, data: WriteData, opts: WriteOptions = {}): Promise<WriteInfo> {
    let file = "";
    const size = await this.op(
      "file.write",
      { path: eventPath(path) },
      async (client) => {
        file = requireName(this.path(path), "write");
        const mode = parseMode(opts.mode, 0o644);
        const max = this.host.maxFileBytes;
        const writeOpts = { mode, keepMode: opts.mode === undefined, parents: true, maxBytes: max };
        if (!isAsyncIterable(data)) {
          const buf = asBuffer(data);
          if (buf.length > max) throw this.tooLarge(file, buf.length);
          const w = client.fileWrite(file, writeOpts);
          w.write(buf);
          return await w.commit(buf.length);
        }
        const w = client.fileWrite(file, writeOpts);
        let total = 0;
        try {
          for await (const chunk of data) {
            if (w.error) break;
            const buf = asBuffer(chunk);
            total += buf.length;
            if (total > max) throw this.tooLarge(file, null);
            w.write(buf);
            await w.drain();
          }
        } catch (err) {
          w.cancel();
          throw err;
        }
        return await w.commit(total);
      },
      (n) => ({ bytes: n }),
    );
    return { name: baseName(file), path: file, type: "file", size };
  }

  /** write() from a stream (a Node Readable or any async iterable of chunks). */
  upload(
    path: string,
    source: Readable | AsyncIterable<Uint8Array | string>,
    opts: WriteOptions = {},
  ): Promise<WriteInfo> {
    if (!isAsyncIterable(source)) {
      return Promise.reject(
        new CorralError("invalid_argument", "upload needs a Readable or an async iterable"),
      );
    }
    return this.write(path, source, opts);
  }

  /**
   * The entries below a directory, `depth` levels deep (default 1), sorted by path.
   * Symlinks are listed as symlinks and never entered; mount points inside the
   * sandbox (/proc, /dev...) are listed but not entered.
   */
  async list(path: string, opts: { depth?: number } = {}): Promise<EntryInfo[]> {
    return this.op(
      "file.list",
      { path: eventPath(path), depth: opts.depth ?? 1 },
      async (client) => {
        const dir = this.path(path);
        const records = await client.fileList(dir, parseListDepth(opts.depth));
        return records
          .map((r) => entryFrom(r, joinPath(dir, r.name)))
          .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
      },
      (entries) => ({ entries: entries.length }),
    );
  }

  /** What is at a path; a symlink is described itself unless followSymlinks is set. */
  async stat(path: string, opts: { followSymlinks?: boolean } = {}): Promise<EntryInfo> {
    return this.op("file.stat", { path: eventPath(path) }, async (client) => {
      const file = this.path(path);
      return entryFrom(await client.fileStat(file, opts.followSymlinks === true), file);
    });
  }

  /** Whether something (a dangling symlink included) is at a path; refusals still throw. */
  async exists(path: string): Promise<boolean> {
    try {
      await this.stat(path);
      return true;
    } catch (err) {
      if (err instanceof CorralError && err.code === "not_found") return false;
      throw err;
    }
  }

  /** Make a directory (with `recursive`, its parents too). True if it was made, false if it was one already. */
  async mkdir(path: string, opts: { recursive?: boolean; mode?: number } = {}): Promise<boolean> {
    return this.op(
      "file.mkdir",
      { path: eventPath(path) },
      async (client) =>
        client.fileMkdir(this.path(path), opts.recursive === true, parseMode(opts.mode, 0o755)),
      (created) => ({ created }),
    );
  }

  /** Remove a file, a symlink (not its target) or an empty directory; with `recursive`, a tree. */
  async remove(path: string, opts: { recursive?: boolean } = {}): Promise<void> {
    await this.op(
      "file.remove",
      { path: eventPath(path), recursive: opts.recursive === true },
      async (client) =>
        client.fileRemove(requireName(this.path(path), "remove"), opts.recursive === true),
      (entries) => ({ entries }),
    );
  }

  /** Rename (move) within the sandbox; replaces the destination unless overwrite is false. */
  async rename(from: string, to: string, opts: { overwrite?: boolean } = {}): Promise<EntryInfo> {
    return this.op("file.rename", { path: eventPath(from), to: eventPath(to) }, async (client) => {
      const src = requireName(this.path(from), "rename");
      const dst = requireName(this.path(to), "rename onto");
      await client.fileRename(src, dst, opts.overwrite === false);
      return entryFrom(await client.fileStat(dst, false), dst);
    });
  }
}
