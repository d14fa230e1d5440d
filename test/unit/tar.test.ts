import { execFileSync } from "node:child_process";
import {
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { afterAll, describe, expect, it } from "vitest";
import {
  parseNumber,
  parsePaxRecords,
  readTar,
  TarFormatError,
  type TarHeader,
} from "../../src/images/tar.js";
import { tarArchive } from "../helpers/tar-writer.js";

interface Read {
  header: TarHeader;
  data: string;
}

async function readAll(bytes: Buffer, chunkSize = 700): Promise<Read[]> {
  // Odd chunk sizes: headers and data straddle chunk boundaries.
  const chunks = async function* () {
    for (let off = 0; off < bytes.length; off += chunkSize)
      yield bytes.subarray(off, off + chunkSize);
  };
  const out: Read[] = [];
  for await (const e of readTar(chunks())) {
    const parts: Buffer[] = [];
    for await (const c of e.body) parts.push(c);
    out.push({ header: e.header, data: Buffer.concat(parts).toString("utf8") });
  }
  return out;
}

async function errorOf(p: Promise<unknown>): Promise<Error> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TarFormatError);
  return err as Error;
}

const work = mkdtempSync(path.join(tmpdir(), "corral-tar-"));
afterAll(() => execFileSync("rm", ["-rf", work]));

/** A small tree with every kind of name a real archive has, and long ones. */
function sampleTree(): string {
  const dir = mkdtempSync(path.join(work, "tree-"));
  // 216 bytes in all: ustar splits it into prefix and name, gnu and pax write it whole.
  const deep = `${"d".repeat(60)}/${"e".repeat(60)}`;
  mkdirSync(path.join(dir, deep), { recursive: true });
  writeFileSync(path.join(dir, "hello.txt"), "hello\n");
  writeFileSync(path.join(dir, deep, `${"n".repeat(90)}.txt`), "deep\n");
  symlinkSync("/usr/lib/../bin", path.join(dir, "abs-link"));
  symlinkSync(`${"t".repeat(150)}/target`, path.join(dir, "long-link"));
  linkSync(path.join(dir, "hello.txt"), path.join(dir, "hard.txt"));
  execFileSync("mkfifo", [path.join(dir, "fifo")]);
  return dir;
}

describe.each(["ustar", "gnu", "pax"] as const)("reading GNU tar's %s format", (format) => {
  it("gets every entry's name, type, link, mode, owner and data", async () => {
    const dir = sampleTree();
    const file = path.join(work, `${format}.tar`);
    const args = [`--format=${format}`, "-cf", file, "--owner=:1234", "--group=:5678", "-C", dir];
    // ustar cannot store link targets over 100 bytes: leave that one out there.
    const names = ["hello.txt", "hard.txt", "abs-link", "fifo", "dddd"];
    if (format !== "ustar") names.push("long-link");
    execFileSync("tar", [...args, ...names.map((n) => (n === "dddd" ? "d".repeat(60) : n))]);
    const entries = await readAll(readFileSync(file));
    const by = new Map(entries.map((e) => [e.header.name.replace(/\/$/, ""), e]));
    expect(by.get("hello.txt")).toMatchObject({
      header: { type: "file", uid: 1234, gid: 5678, size: 6 },
      data: "hello\n",
    });
    expect(by.get("hard.txt")?.header).toMatchObject({ type: "hardlink", linkname: "hello.txt" });
    expect(by.get("abs-link")?.header).toMatchObject({
      type: "symlink",
      linkname: "/usr/lib/../bin",
    });
    expect(by.get("fifo")?.header.type).toBe("fifo");
    const deepName = `${"d".repeat(60)}/${"e".repeat(60)}/${"n".repeat(90)}.txt`;
    expect(by.get(deepName)).toMatchObject({ header: { type: "file" }, data: "deep\n" });
    expect(by.get(`${"d".repeat(60)}/${"e".repeat(60)}`)?.header.type).toBe("dir");
    if (format !== "ustar") {
      expect(by.get("long-link")?.header.linkname).toBe(`${"t".repeat(150)}/target`);
    }
    expect(by.get("hello.txt")?.header.mode).toBe(0o644);
  });
});

describe("readTar", () => {
  it("reads GNU base-256 owners (ids above 2097151)", async () => {
    const dir = mkdtempSync(path.join(work, "big-"));
    writeFileSync(path.join(dir, "f"), "x");
    const file = path.join(work, "big.tar");
    execFileSync("tar", [
      "--format=gnu",
      "-cf",
      file,
      "--owner=:3000000",
      "--group=:4000000",
      "-C",
      dir,
      "f",
    ]);
    const [e] = await readAll(readFileSync(file));
    expect(e?.header).toMatchObject({ uid: 3_000_000, gid: 4_000_000 });
  });

  it("reads gzip-free archives of its own writer, long names through pax", async () => {
    const long = `${"a".repeat(200)}/b`;
    const entries = await readAll(
      tarArchive([
        { name: "x/", type: "dir" },
        { name: long, data: "1" },
        { name: "s", type: "symlink", linkname: "y".repeat(300) },
        { name: "dev", type: "char", devmajor: 1, devminor: 3 },
      ]),
      1,
    );
    expect(entries.map((e) => [e.header.name, e.header.type])).toEqual([
      ["x/", "dir"],
      [long, "file"],
      ["s", "symlink"],
      ["dev", "char"],
    ]);
    expect(entries[2]?.header.linkname).toBe("y".repeat(300));
    expect(entries[3]?.header).toMatchObject({ devmajor: 1, devminor: 3 });
  });

  it("skips the data an entry's reader left unread", async () => {
    const bytes = tarArchive([
      { name: "big", data: Buffer.alloc(100_000, 7) },
      { name: "next", data: "n" },
    ]);
    const names: string[] = [];
    let nextData = "";
    for await (const e of readTar(Readable.from([bytes]))) {
      names.push(e.header.name);
      if (e.header.name === "big") {
        for await (const _ of e.body) break; // read one chunk at most
      } else {
        for await (const c of e.body) nextData += c.toString();
      }
    }
    expect(names).toEqual(["big", "next"]);
    expect(nextData).toBe("n");
  });

  it("an empty stream is an empty archive; a lone end block is too", async () => {
    expect(await readAll(Buffer.alloc(0))).toEqual([]);
    expect(await readAll(Buffer.alloc(512))).toEqual([]);
  });

  it("reports the data offset of each entry", async () => {
    const bytes = tarArchive([
      { name: "a", data: "aaa" },
      { name: "b", data: "bb" },
    ]);
    const offsets: number[] = [];
    for await (const e of readTar(Readable.from([bytes]))) offsets.push(e.dataOffset);
    expect(offsets).toEqual([512, 1536]);
    expect(bytes.toString("utf8", 1536, 1538)).toBe("bb");
  });

  it("refuses a corrupt header, a truncated archive and a non-archive", async () => {
    const bytes = tarArchive([{ name: "a", data: "x".repeat(1000) }]);
    const corrupt = Buffer.from(bytes);
    corrupt[10] = 0x41;
    expect((await errorOf(readAll(corrupt))).message).toMatch(/bad header checksum at byte 0/);
    expect((await errorOf(readAll(bytes.subarray(0, 900)))).message).toMatch(/truncated/);
    expect((await errorOf(readAll(Buffer.from("not a tar\n".repeat(100))))).message).toMatch(
      /checksum/,
    );
  });

  it("refuses names that are not UTF-8", async () => {
    const bytes = tarArchive([{ name: "ok", data: "x" }]);
    const bad = Buffer.from(bytes);
    bad[0] = 0xff;
    // fix the checksum so that only the name is wrong
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : bad[i]!;
    bad.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
    expect((await errorOf(readAll(bad))).message).toMatch(/not valid UTF-8/);
  });
});

describe("parseNumber", () => {
  it.each([
    ["0000644\0", 0o644],
    ["   644 ", 0o644],
    ["\0\0\0\0", 0],
    ["00000001750\0", 1000],
  ])("octal %j is %d", (text, n) => {
    expect(parseNumber(Buffer.from(text, "latin1"), "x")).toBe(n);
  });

  it("reads base-256 and refuses negative and garbage numbers", () => {
    expect(parseNumber(Buffer.from([0x80, 0, 0, 0, 0, 0, 0, 0x01, 0x00]), "x")).toBe(256);
    expect(() => parseNumber(Buffer.from([0xff, 0xff]), "size")).toThrow(/negative size/);
    expect(() => parseNumber(Buffer.from("12a4\0"), "mode")).toThrow(/not an octal number/);
  });

  it("shows a garbage field's bytes escaped, never raw (an ESC would reach the terminal)", () => {
    const field = Buffer.from([0x1b, 0x5b, 0x33, 0x31, 0x6d, 0x88, 0xe9, 0x22]);
    expect(() => parseNumber(field, "header checksum")).toThrow(
      'header checksum is not an octal number: "\\x1b[31m\\x88\\xe9\\""',
    );
  });
});

describe("parsePaxRecords", () => {
  it("parses records, UTF-8 values and values with = and newlines", () => {
    const rec = (k: string, v: string) => {
      const body = ` ${k}=${v}\n`;
      let n = Buffer.byteLength(body) + 2;
      if (String(n).length + Buffer.byteLength(body) !== n) n++;
      return `${n}${body}`;
    };
    const data = Buffer.from(rec("path", "dir/ü.txt") + rec("comment", "a=b\nc"));
    expect(parsePaxRecords(data)).toEqual({ path: "dir/ü.txt", comment: "a=b\nc" });
  });

  it.each([["x path=a\n"], ["99 path=a\n"], ["10 patha\n\n"], ["5 =a\n"]])(
    "refuses malformed %j",
    (text) => {
      expect(() => parsePaxRecords(Buffer.from(text))).toThrow(TarFormatError);
    },
  );
});

describe("global pax records", () => {
  it("a pile of global records is refused at once, not copied into every entry", async () => {
    const { header, pad, paxRecord } = await import("../helpers/tar-writer.js");
    let records = "";
    for (let i = 0; i < 100; i++) records += paxRecord(`corral.k${i}`, "v".repeat(100));
    const data = Buffer.from(records);
    const bomb = Buffer.concat([
      header("GlobalHead", "g", data.length, {}),
      data,
      pad(data.length),
      tarArchive([{ name: "a", data: "x" }]),
    ]);
    expect((await errorOf(readAll(bomb))).message).toMatch(
      /^too many global pax records \(100 keys/,
    );
  });

  it("a few global records apply to later entries", async () => {
    const { header, pad, paxRecord } = await import("../helpers/tar-writer.js");
    const data = Buffer.from(paxRecord("uid", "1234"));
    const tar = Buffer.concat([
      header("GlobalHead", "g", data.length, {}),
      data,
      pad(data.length),
      tarArchive([{ name: "a", data: "x" }]),
    ]);
    const [entry] = await readAll(tar);
    expect(entry?.header.uid).toBe(1234);
  });
});

describe("per-entry pax records", () => {
  it("many 'x' headers before one entry are refused at once", async () => {
    const { header, pad, paxRecord } = await import("../helpers/tar-writer.js");
    const parts: Buffer[] = [];
    for (let h = 0; h < 40; h++) {
      let records = "";
      for (let i = 0; i < 10; i++) records += paxRecord(`corral.h${h}k${i}`, "v");
      const data = Buffer.from(records);
      parts.push(header("PaxHeader", "x", data.length, {}), data, pad(data.length));
    }
    const bomb = Buffer.concat([...parts, tarArchive([{ name: "a", data: "x" }])]);
    expect((await errorOf(readAll(bomb))).message).toMatch(
      /^too many pax records for one entry \(17 headers/,
    );
  });
});
