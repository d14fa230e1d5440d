import { constants } from "node:os";
import { describe, expect, it } from "vitest";
import { CorralError } from "../../src/core/errors.js";
import {
  baseName,
  DEFAULT_MAX_FILE_BYTES,
  fileError,
  fileErrorCode,
  joinPath,
  MAX_PATH_BYTES,
  parseListDepth,
  parseMaxFileBytes,
  parseMode,
  parseReadFormat,
  requireName,
  sandboxPath,
} from "../../src/core/files.js";

const W = "/work";

function refusal(f: () => unknown): string {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(CorralError);
    expect((err as CorralError).code).toBe("invalid_argument");
    expect((err as CorralError).message).not.toMatch(/\n/);
    return (err as CorralError).message;
  }
  throw new Error("expected a refusal");
}

describe("sandboxPath", () => {
  it.each([
    ["a.txt", "/work/a.txt"],
    ["./a.txt", "/work/a.txt"],
    ["sub//dir///f", "/work/sub/dir/f"],
    ["dir/", "/work/dir"],
    ["/", "/"],
    ["/etc/hostname", "/etc/hostname"],
    ["/tmp/./x/.", "/tmp/x"],
    // ".." is lexical and never goes above "/": confinement is the supervisor's, this
    // only keeps paths predictable.
    ["../../x", "/x"],
    ["../../../../../../../../etc/shadow", "/etc/shadow"],
    ["/..", "/"],
    ["/a/b/../../../c", "/c"],
    ["a/../b", "/work/b"],
    // Names are literal: no URL decoding, backslashes are characters.
    ["..%2f..%2fetc", "/work/..%2f..%2fetc"],
    ["..%2F", "/work/..%2F"],
    ["..\\..\\x", "/work/..\\..\\x"],
    ["...", "/work/..."],
    ["dir with space/ü.txt", "/work/dir with space/ü.txt"],
    ["line\nbreak", "/work/line\nbreak"],
  ])("%j -> %j", (input, out) => {
    expect(sandboxPath(input, W)).toBe(out);
  });

  it("resolves relative paths against the given workdir", () => {
    expect(sandboxPath("x", "/")).toBe("/x");
    expect(sandboxPath("../x", "/home/user")).toBe("/home/x");
  });

  it.each([
    [undefined, /must be a string/],
    [42, /must be a string/],
    [null, /must be a string/],
    ["", /empty/],
    ["a\0b", /NUL/],
    ["\0", /NUL/],
    ["a\uD800b", /lone surrogate/],
    ["\uDC00", /lone surrogate/],
  ])("refuses %j", (input, why) => {
    expect(refusal(() => sandboxPath(input, W))).toMatch(why);
  });

  it("takes a well-formed surrogate pair (an emoji)", () => {
    expect(sandboxPath("😀.txt", W)).toBe("/work/😀.txt");
  });

  it("refuses a 5000-byte path with a clear message", () => {
    const msg = refusal(() => sandboxPath(`/${"a/".repeat(2500)}`, W));
    expect(msg).toBe("the path is 5001 bytes long; the limit is 4095");
  });

  it("counts bytes, not characters", () => {
    const name = "é".repeat(100); // 200 bytes
    const fits = `/${`${name}/`.repeat(20)}`; // 4021 bytes, 2021 characters
    expect(sandboxPath(fits, W)).toBe(fits.slice(0, -1));
    const over = `/${`${name}/`.repeat(21)}`; // 4222 bytes, only 2122 characters
    expect(refusal(() => sandboxPath(over, W))).toBe(
      "the path is 4222 bytes long; the limit is 4095",
    );
  });

  it("refuses a path that grows past the limit once joined to the workdir", () => {
    const rel = "b/".repeat(2046); // 4092 bytes: fine alone, and under "/"
    expect(sandboxPath(rel, "/")).toHaveLength(4092);
    expect(refusal(() => sandboxPath(rel, W))).toBe(
      "the path is 4097 bytes long; the limit is 4095",
    );
  });

  it("a path exactly at the limit passes; one byte more does not", () => {
    const at = `/${"c/".repeat(2046)}cc`;
    expect(Buffer.byteLength(at)).toBe(MAX_PATH_BYTES);
    expect(sandboxPath(at, W)).toBe(at);
    expect(refusal(() => sandboxPath(`${at}c`, W))).toMatch(/4096 bytes/);
  });

  it("refuses a name over 255 bytes", () => {
    expect(sandboxPath(`/${"n".repeat(255)}`, W)).toHaveLength(256);
    expect(refusal(() => sandboxPath(`/tmp/${"n".repeat(256)}`, W))).toMatch(
      /is 256 bytes long; the limit is 255/,
    );
    // "ü" is two bytes: 128 of them are 256 bytes
    expect(refusal(() => sandboxPath(`/${"ü".repeat(128)}`, W))).toMatch(/256 bytes/);
  });
});

describe("path helpers", () => {
  it("baseName and joinPath", () => {
    expect(baseName("/work/a.txt")).toBe("a.txt");
    expect(baseName("/")).toBe("");
    expect(joinPath("/", "a/b")).toBe("/a/b");
    expect(joinPath("/work", "a/b")).toBe("/work/a/b");
  });

  it("requireName refuses the root only", () => {
    expect(requireName("/x", "remove")).toBe("/x");
    expect(refusal(() => requireName("/", "remove"))).toBe("cannot remove the root directory");
  });
});

describe("options", () => {
  it("depth", () => {
    expect(parseListDepth(undefined)).toBe(1);
    expect(parseListDepth(1)).toBe(1);
    expect(parseListDepth(64)).toBe(64);
    for (const bad of [0, -1, 65, 1.5, "2", Number.NaN, null]) {
      expect(refusal(() => parseListDepth(bad))).toMatch(/depth must be an integer from 1 to 64/);
    }
  });

  it("mode", () => {
    expect(parseMode(undefined, 0o644)).toBe(0o644);
    expect(parseMode(0, 0o644)).toBe(0);
    expect(parseMode(0o755, 0o644)).toBe(0o755);
    for (const bad of [0o4755, 0o1777, -1, 0.5, "644"]) {
      expect(refusal(() => parseMode(bad, 0o644))).toMatch(/0 to 0o777/);
    }
  });

  it("maxFileBytes", () => {
    expect(parseMaxFileBytes(undefined)).toBe(DEFAULT_MAX_FILE_BYTES);
    expect(DEFAULT_MAX_FILE_BYTES).toBe(100 * 1024 * 1024);
    expect(parseMaxFileBytes(0)).toBe(0);
    expect(parseMaxFileBytes(5)).toBe(5);
    for (const bad of [-1, 1.5, "1m", Number.POSITIVE_INFINITY, 2 ** 60]) {
      expect(refusal(() => parseMaxFileBytes(bad))).toMatch(/maxFileBytes/);
    }
  });

  it("read format", () => {
    expect(parseReadFormat(undefined)).toBe("text");
    expect(parseReadFormat("bytes")).toBe("bytes");
    expect(parseReadFormat("stream")).toBe("stream");
    expect(refusal(() => parseReadFormat("blob"))).toMatch(/"text", "bytes" or "stream"/);
  });
});

describe("file errors", () => {
  const E = constants.errno;
  it.each([
    [E.ENOENT, "not_found"],
    [E.EXDEV, "permission_denied"],
    [E.ELOOP, "permission_denied"],
    [E.EACCES, "permission_denied"],
    [E.EPERM, "permission_denied"],
    [E.EROFS, "permission_denied"],
    [E.EBUSY, "permission_denied"],
    [E.EFBIG, "too_large"],
    [E.ENOSPC, "not_enough_space"],
    [E.EDQUOT, "not_enough_space"],
    [E.EAGAIN, "busy"],
    [E.EINVAL, "invalid_argument"],
    [E.EISDIR, "invalid_argument"],
    [E.ENOTDIR, "invalid_argument"],
    [E.ENOTEMPTY, "invalid_argument"],
    [E.EEXIST, "invalid_argument"],
    [E.ENAMETOOLONG, "invalid_argument"],
    [E.E2BIG, "invalid_argument"],
    [E.ENXIO, "invalid_argument"],
    [E.EIO, "runtime_failed"],
    [0, "runtime_failed"],
  ])("errno %i -> %s", (errno, code) => {
    expect(fileErrorCode(errno)).toBe(code);
  });

  it("keeps the supervisor's message and adds a hint where there is a fix", () => {
    const e = fileError(E.EFBIG, "read /x: 200 bytes, over the 100-byte cap");
    expect(e.code).toBe("too_large");
    expect(e.message).toBe("read /x: 200 bytes, over the 100-byte cap");
    expect(e.hint).toMatch(/maxFileBytes/);
    expect(fileError(E.ENOENT, "read /x: No such file or directory").hint).toBeUndefined();
  });
});
