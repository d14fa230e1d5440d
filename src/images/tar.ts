/**
 * A streaming tar reader: POSIX ustar, GNU long names and long link targets ('L', 'K'),
 * GNU base-256 numbers, and pax extended headers ('x' per entry, 'g' global). It only
 * parses: what an entry may do to a file system is decided by import-policy.ts, and done
 * by import.ts. Names are decoded as strict UTF-8; anything malformed is a TarFormatError.
 */
import { quoteBytes, quoteUntrusted } from "../core/errors.js";

/** What an entry is, from its typeflag. */
export type TarEntryType =
  | "file"
  | "hardlink"
  | "symlink"
  | "char"
  | "block"
  | "dir"
  | "fifo"
  | "sparse"
  | "other";

export interface TarHeader {
  /** The entry's path as written in the archive (after pax and GNU long-name overrides). */
  name: string;
  type: TarEntryType;
  /** The raw typeflag character ("0", "5", "x"...), for messages about unknown types. */
  typeflag: string;
  mode: number;
  uid: number;
  gid: number;
  /** Bytes of data that follow the header. */
  size: number;
  /** Seconds since the epoch. */
  mtime: number;
  /** Link target (symlinks and hard links). */
  linkname: string;
  devmajor: number;
  devminor: number;
  /** The pax records that applied to this entry (global and per-entry). */
  pax: Record<string, string>;
}

export interface TarEntry {
  header: TarHeader;
  /** Offset of the entry's data in the (uncompressed) stream. */
  dataOffset: number;
  /**
   * The entry's data. Read it, or not: the reader skips what is left before the next
   * entry. It is valid only until the next entry is requested.
   */
  body: AsyncIterable<Buffer>;
}

export class TarFormatError extends Error {
  override readonly name = "TarFormatError";
}

const BLOCK = 512;
/** GNU long names, pax headers: metadata, never this large in a real archive. */
const MAX_META_SIZE = 1024 * 1024;
/** Global pax records, all together (they are copied into every entry). */
const MAX_GLOBAL_PAX_KEYS = 64;
const MAX_GLOBAL_PAX_BYTES = 64 * 1024;
/** Per-entry ('x') pax records: headers before one entry, and keys they set. */
const MAX_PAX_HEADERS_PER_ENTRY = 16;
const MAX_ENTRY_PAX_KEYS = 256;

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function text(field: Buffer, what: string): string {
  const end = field.indexOf(0);
  const bytes = end >= 0 ? field.subarray(0, end) : field;
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new TarFormatError(`${what} is not valid UTF-8`);
  }
}

/** A numeric field: octal ASCII (space or NUL terminated), or GNU base-256. */
export function parseNumber(field: Buffer, what: string): number {
  const first = field[0] ?? 0;
  if (first & 0x80) {
    // base-256, big-endian two's complement; negative numbers have no use here
    if (first & 0x40) throw new TarFormatError(`negative ${what}`);
    let n = first & 0x3f;
    for (const b of field.subarray(1)) {
      n = n * 256 + b;
      if (n > Number.MAX_SAFE_INTEGER) throw new TarFormatError(`${what} is too large`);
    }
    return n;
  }
  const s = field
    .toString("latin1")
    .replace(/[\0 ]+$/, "")
    .replace(/^ +/, "");
  if (s === "") return 0;
  if (!/^[0-7]+$/.test(s)) {
    // A garbage field's bytes, escaped: they go to a terminal in the error message.
    throw new TarFormatError(
      `${what} is not an octal number: ${quoteBytes(Buffer.from(s, "latin1"))}`,
    );
  }
  const n = Number.parseInt(s, 8);
  if (!Number.isSafeInteger(n)) throw new TarFormatError(`${what} is too large`);
  return n;
}

function isZeroBlock(b: Buffer): boolean {
  for (const byte of b) if (byte !== 0) return false;
  return true;
}

/** Verify a header block's checksum: the unsigned (or historic signed) sum with the field as spaces. */
function checksumOk(block: Buffer): boolean {
  const stored = parseNumber(block.subarray(148, 156), "header checksum");
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : block[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

function typeOf(flag: string): TarEntryType {
  switch (flag) {
    case "0":
    case "\0":
    case "7": // contiguous file: a regular file everywhere that matters
      return "file";
    case "1":
      return "hardlink";
    case "2":
      return "symlink";
    case "3":
      return "char";
    case "4":
      return "block";
    case "5":
    case "D": // GNU dumpdir: a directory with a listing as its data
      return "dir";
    case "6":
      return "fifo";
    case "S":
      return "sparse";
    default:
      return "other";
  }
}

/**
 * Parse pax extended header records: "<len> <key>=<value>\n", where len counts the whole
 * record. Exported for tests.
 */
export function parsePaxRecords(data: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let off = 0;
  while (off < data.length) {
    if (data[off] === 0) break; // padding some writers leave
    const space = data.indexOf(0x20, off);
    if (space < 0) throw new TarFormatError("malformed pax record (no length)");
    const lenText = data.toString("latin1", off, space);
    if (!/^[1-9][0-9]*$/.test(lenText)) throw new TarFormatError("malformed pax record length");
    const len = Number(lenText);
    const end = off + len;
    if (end > data.length || data[end - 1] !== 0x0a)
      throw new TarFormatError("malformed pax record (bad length)");
    const record = data.subarray(space + 1, end - 1);
    const eq = record.indexOf(0x3d);
    if (eq <= 0) throw new TarFormatError("malformed pax record (no key)");
    let key: string;
    let value: string;
    try {
      key = strictUtf8.decode(record.subarray(0, eq));
      value = strictUtf8.decode(record.subarray(eq + 1));
    } catch {
      throw new TarFormatError("pax record is not valid UTF-8");
    }
    out[key] = value;
    off = end;
  }
  return out;
}

function paxNumber(pax: Record<string, string>, key: string): number | undefined {
  const v = pax[key];
  if (v === undefined) return undefined;
  if (key === "mtime") {
    const n = Number(v);
    if (!/^-?\d+(\.\d+)?$/.test(v) || !Number.isFinite(n))
      throw new TarFormatError(`pax ${key} is not a number: ${quoteUntrusted(v)}`);
    return Math.floor(n);
  }
  if (!/^\d+$/.test(v))
    throw new TarFormatError(`pax ${key} is not a number: ${quoteUntrusted(v)}`);
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new TarFormatError(`pax ${key} is too large`);
  return n;
}

/** Pulls exact byte counts out of an async stream of chunks. */
class ByteSource {
  private readonly it: AsyncIterator<Buffer | string>;
  private buf: Buffer = Buffer.alloc(0);
  private ended = false;
  /** Bytes consumed so far (the position of the next byte returned). */
  position = 0;

  constructor(source: AsyncIterable<Buffer | string>) {
    this.it = source[Symbol.asyncIterator]();
  }

  private async pull(): Promise<boolean> {
    if (this.ended) return false;
    const next = await this.it.next();
    if (next.done) {
      this.ended = true;
      return false;
    }
    const chunk = typeof next.value === "string" ? Buffer.from(next.value) : next.value;
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    return true;
  }

  /** Exactly n bytes; null at a clean end of stream; throws if it ends midway. */
  async read(n: number): Promise<Buffer | null> {
    while (this.buf.length < n) {
      if (!(await this.pull())) {
        if (this.buf.length === 0) return null;
        throw new TarFormatError(`archive is truncated at byte ${this.position + this.buf.length}`);
      }
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    this.position += n;
    return out;
  }

  /** n bytes, as the chunks they arrive in. */
  async *chunks(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.buf.length === 0 && !(await this.pull())) {
        throw new TarFormatError(`archive is truncated at byte ${this.position}`);
      }
      const take = Math.min(left, this.buf.length);
      const out = this.buf.subarray(0, take);
      this.buf = this.buf.subarray(take);
      this.position += take;
      left -= take;
      yield out;
    }
  }

  /** Read and drop everything that is left (so that a hash over the stream sees it all). */
  async drain(): Promise<void> {
    this.position += this.buf.length;
    this.buf = Buffer.alloc(0);
    while (await this.pull()) {
      this.position += this.buf.length;
      this.buf = Buffer.alloc(0);
    }
  }
}

/**
 * The entries of a tar stream, in order. An empty stream is an empty archive. After the
 * end-of-archive blocks the rest of the stream is read and ignored.
 */
export async function* readTar(source: AsyncIterable<Buffer | string>): AsyncGenerator<TarEntry> {
  const src = new ByteSource(source);
  let globalPax: Record<string, string> = {};
  let pax: Record<string, string> | null = null;
  let paxHeaders = 0;
  let longName: string | null = null;
  let longLink: string | null = null;

  const readMeta = async (size: number, what: string): Promise<Buffer> => {
    if (size > MAX_META_SIZE) throw new TarFormatError(`${what} of ${size} bytes is too large`);
    const data = await src.read(size);
    if (data === null && size > 0) throw new TarFormatError("archive is truncated");
    await skipPadding(size);
    return Buffer.from(data ?? Buffer.alloc(0));
  };
  const skipPadding = async (size: number): Promise<void> => {
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (pad > 0 && (await src.read(pad)) === null) throw new TarFormatError("archive is truncated");
  };

  for (;;) {
    const headerOffset = src.position;
    const block = await src.read(BLOCK);
    if (block === null) {
      if (pax || longName !== null || longLink !== null)
        throw new TarFormatError("archive ends after an extended header");
      return;
    }
    if (isZeroBlock(block)) {
      // End of archive (one or two zero blocks); whatever follows is padding.
      await src.drain();
      return;
    }
    if (!checksumOk(block)) {
      throw new TarFormatError(`bad header checksum at byte ${headerOffset}: not a tar archive?`);
    }
    const typeflag = String.fromCharCode(block[156]!);
    const size = parseNumber(block.subarray(124, 136), "size");

    if (typeflag === "x" || typeflag === "g") {
      const records = parsePaxRecords(await readMeta(size, "pax header"));
      if (typeflag === "g") {
        globalPax = { ...globalPax, ...records };
        // Global records apply to every later entry: a pile of them would be copied into
        // each (a small archive that costs hours and gigabytes). Real archives hold a few.
        const keys = Object.keys(globalPax);
        const bytes = keys.reduce((n, k) => n + k.length + (globalPax[k]?.length ?? 0), 0);
        if (keys.length > MAX_GLOBAL_PAX_KEYS || bytes > MAX_GLOBAL_PAX_BYTES) {
          throw new TarFormatError(
            `too many global pax records (${keys.length} keys, ${bytes} bytes; at most ${MAX_GLOBAL_PAX_KEYS} and ${MAX_GLOBAL_PAX_BYTES})`,
          );
        }
      } else {
        // Several 'x' headers may precede one entry; together they are bounded like the
        // global ones, and merged in place (a copy per header would be quadratic).
        pax ??= {};
        Object.assign(pax, records);
        paxHeaders++;
        const keys = Object.keys(pax);
        const bytes = keys.reduce((n, k) => n + k.length + (pax?.[k]?.length ?? 0), 0);
        if (
          paxHeaders > MAX_PAX_HEADERS_PER_ENTRY ||
          keys.length > MAX_ENTRY_PAX_KEYS ||
          bytes > MAX_META_SIZE
        ) {
          throw new TarFormatError(
            `too many pax records for one entry (${paxHeaders} headers, ${keys.length} keys, ${bytes} bytes)`,
          );
        }
      }
      continue;
    }
    if (typeflag === "L" || typeflag === "K") {
      const data = await readMeta(size, "GNU long name");
      const value = text(data, typeflag === "L" ? "long name" : "long link target");
      if (typeflag === "L") longName = value;
      else longLink = value;
      continue;
    }

    const magic = block.toString("latin1", 257, 263);
    let name = text(block.subarray(0, 100), "entry name");
    if (magic === "ustar\0") {
      // POSIX ustar: a prefix field holds the leading directories of long names.
      const prefix = text(block.subarray(345, 500), "entry name prefix");
      if (prefix !== "") name = `${prefix}/${name}`;
    }
    let linkname = text(block.subarray(157, 257), "link target");
    const applied = { ...globalPax, ...(pax ?? {}) };
    if (longName !== null) name = longName;
    if (longLink !== null) linkname = longLink;
    if (applied.path !== undefined) name = applied.path;
    if (applied.linkpath !== undefined) linkname = applied.linkpath;

    let type = typeOf(typeflag);
    // Old (v7) archives mark directories only by a trailing slash.
    if (type === "file" && (typeflag === "\0" || typeflag === "0") && name.endsWith("/")) {
      type = "dir";
    }
    const header: TarHeader = {
      name,
      type,
      typeflag,
      mode: parseNumber(block.subarray(100, 108), "mode") & 0o7777,
      uid: paxNumber(applied, "uid") ?? parseNumber(block.subarray(108, 116), "uid"),
      gid: paxNumber(applied, "gid") ?? parseNumber(block.subarray(116, 124), "gid"),
      size: paxNumber(applied, "size") ?? size,
      mtime: paxNumber(applied, "mtime") ?? parseNumber(block.subarray(136, 148), "mtime"),
      linkname,
      devmajor: parseNumber(block.subarray(329, 337), "device major"),
      devminor: parseNumber(block.subarray(337, 345), "device minor"),
      pax: applied,
    };
    pax = null;
    paxHeaders = 0;
    longName = null;
    longLink = null;

    // Hard links, symlinks, devices, FIFOs and directories carry no data in practice,
    // but a size in their header still occupies blocks (GNU dumpdirs do): honour it.
    const dataSize = header.size;
    const dataOffset = src.position;
    let consumed = 0;
    let reading = false;
    const body: AsyncIterable<Buffer> = {
      [Symbol.asyncIterator]: () => {
        if (reading) throw new Error("an entry's body can be read only once");
        reading = true;
        const inner = src.chunks(dataSize);
        return {
          next: async () => {
            const r = await inner.next();
            if (!r.done) consumed += r.value.length;
            return r;
          },
          return: async () => ({ done: true, value: undefined }),
          [Symbol.asyncIterator]() {
            return this;
          },
        } as AsyncIterator<Buffer>;
      },
    };
    yield { header, dataOffset, body };
    // Skip whatever the consumer did not read, then the padding to the next block.
    for await (const _ of src.chunks(dataSize - consumed)) {
      // dropped
    }
    await skipPadding(dataSize);
  }
}
