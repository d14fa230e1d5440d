/**
 * A minimal pure-Python wheel, written directly as a zip (stored, no compression), so
 * that package installs can be tested with no package index.
 */
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";

function zip(files: [string, Buffer][]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const [name, data] of files) {
    const n = Buffer.from(name);
    const crc = crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(0, 6); // flags
    local.writeUInt16LE(0, 8); // stored
    local.writeUInt16LE(0, 10); // time
    local.writeUInt16LE(0x21, 12); // date: 1980-01-01
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(n.length, 26);
    local.writeUInt16LE(0, 28);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(0, 8);
    central.writeUInt16LE(0, 10);
    central.writeUInt16LE(0, 12);
    central.writeUInt16LE(0x21, 14);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(data.length, 20);
    central.writeUInt32LE(data.length, 24);
    central.writeUInt16LE(n.length, 28);
    central.writeUInt32LE(0o644 << 16, 38); // external attributes: a regular file, 0644
    central.writeUInt32LE(offset, 42);
    locals.push(local, n, data);
    centrals.push(central, n);
    offset += local.length + n.length + data.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(files.length, 8);
  end.writeUInt16LE(files.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, end]);
}

/** A wheel of one module package `name` whose __init__ holds `source`. */
export function makeWheel(
  name: string,
  version: string,
  source: string,
): { file: string; data: Buffer } {
  const dist = `${name}-${version}.dist-info`;
  const files: [string, Buffer][] = [
    [`${name}/__init__.py`, Buffer.from(source)],
    [
      `${dist}/METADATA`,
      Buffer.from(`Metadata-Version: 2.1\nName: ${name}\nVersion: ${version}\n`),
    ],
    [
      `${dist}/WHEEL`,
      Buffer.from(
        "Wheel-Version: 1.0\nGenerator: corral-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
      ),
    ],
  ];
  const record = files
    .map(
      ([p, d]) => `${p},sha256=${createHash("sha256").update(d).digest("base64url")},${d.length}`,
    )
    .concat(`${dist}/RECORD,,`)
    .join("\n");
  files.push([`${dist}/RECORD`, Buffer.from(`${record}\n`)]);
  return { file: `${name}-${version}-py3-none-any.whl`, data: zip(files) };
}
