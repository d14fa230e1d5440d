/**
 * The pure policy of a live session's file API: which paths a caller may name, how they
 * are normalised, which options are valid, and how the supervisor's errno answers become
 * CorralErrors. No I/O here.
 *
 * What these checks are *not*: a confinement. Confinement is the supervisor's job, which
 * resolves every path inside the sandbox with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_XDEV |
 * RESOLVE_NO_MAGICLINKS) (see corral-supervisor.c, "file API"). The host never resolves
 * a path of a live sandbox itself. These checks only make sure a request is well formed
 * and that errors are clear before anything is sent.
 */
import { constants } from "node:os";
import { CorralError, type ErrorCode } from "./errors.js";
import { MiB } from "./limits.js";

/** PATH_MAX (4096) less the NUL the supervisor adds. */
export const MAX_PATH_BYTES = 4095;
/** NAME_MAX: the longest single name a Linux filesystem takes. */
export const MAX_NAME_BYTES = 255;
export const DEFAULT_MAX_FILE_BYTES = 100 * MiB;
export const MAX_LIST_DEPTH = 64;

const invalid = (message: string) => new CorralError("invalid_argument", message);
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * The absolute, normalised path inside the sandbox that `input` names. A relative path is
 * relative to the session's workdir. Normalisation is lexical, as path.posix.normalize
 * (and Go's filepath.Clean) do it: empty and "." components are dropped and ".." removes
 * the component before it, never going above "/". This cannot be an escape, because the
 * result is resolved by the supervisor inside the sandbox's root, where "/.." is "/" too;
 * it only differs from the kernel's reading when the component before a ".." is a
 * symlink, and then the lexical reading is the one a caller can predict.
 *
 * Names are taken literally: "..%2f" is a file called "..%2f" (nothing here, or in the
 * supervisor, decodes URLs), and a backslash is an ordinary character.
 *
 * Refused: non-strings, the empty string, NUL (it would end the path early in C),
 * strings that are not well-formed Unicode (a lone surrogate would be written as U+FFFD,
 * a different name), paths over MAX_PATH_BYTES bytes (before or after normalisation; the
 * kernel would refuse them with ENAMETOOLONG) and names over MAX_NAME_BYTES bytes.
 */
export function sandboxPath(input: unknown, workdir: string): string {
  if (typeof input !== "string") throw invalid("a path must be a string");
  if (input.length === 0) throw invalid("the path is empty");
  if (input.includes("\0")) throw invalid("the path contains a NUL byte");
  if (LONE_SURROGATE.test(input)) throw invalid("the path is not valid Unicode (a lone surrogate)");
  const inputBytes = Buffer.byteLength(input, "utf8");
  if (inputBytes > MAX_PATH_BYTES) {
    throw invalid(`the path is ${inputBytes} bytes long; the limit is ${MAX_PATH_BYTES}`);
  }
  const full = input.startsWith("/") ? input : `${workdir}/${input}`;
  const parts: string[] = [];
  for (const part of full.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      parts.pop();
      continue;
    }
    const bytes = Buffer.byteLength(part, "utf8");
    if (bytes > MAX_NAME_BYTES) {
      throw invalid(
        `the name "${part.slice(0, 40)}..." is ${bytes} bytes long; the limit is ${MAX_NAME_BYTES}`,
      );
    }
    parts.push(part);
  }
  const out = `/${parts.join("/")}`;
  const outBytes = Buffer.byteLength(out, "utf8");
  if (outBytes > MAX_PATH_BYTES) {
    throw invalid(`the path is ${outBytes} bytes long; the limit is ${MAX_PATH_BYTES}`);
  }
  return out;
}

/** The last name of a normalised absolute path ("" for "/"). */
export function baseName(p: string): string {
  return p.slice(p.lastIndexOf("/") + 1);
}

/** A normalised directory joined with a relative path from a listing. */
export function joinPath(dir: string, rel: string): string {
  return dir === "/" ? `/${rel}` : `${dir}/${rel}`;
}

/**
 * Operations that change a name in its directory (write, mkdir, remove, rename) need one:
 * "/" has none, and removing or replacing the root is refused here, before anything is sent.
 */
export function requireName(p: string, what: string): string {
  if (p === "/") throw invalid(`cannot ${what} the root directory`);
  return p;
}

export function parseListDepth(depth: unknown): number {
  if (depth === undefined) return 1;
  if (!Number.isInteger(depth) || (depth as number) < 1 || (depth as number) > MAX_LIST_DEPTH) {
    throw invalid(`depth must be an integer from 1 to ${MAX_LIST_DEPTH}`);
  }
  return depth as number;
}

/** Permission bits for a new file or directory: 0 to 0o777 (no setuid, setgid or sticky). */
export function parseMode(mode: unknown, fallback: number): number {
  if (mode === undefined) return fallback;
  if (!Number.isInteger(mode) || (mode as number) < 0 || (mode as number) > 0o777) {
    throw invalid("mode must be an integer from 0 to 0o777");
  }
  return mode as number;
}

export function parseMaxFileBytes(value: unknown): number {
  if (value === undefined) return DEFAULT_MAX_FILE_BYTES;
  if (!Number.isSafeInteger(value) || (value as number) < 0) {
    throw invalid("maxFileBytes must be a non-negative integer number of bytes");
  }
  return value as number;
}

export type ReadFormat = "text" | "bytes" | "stream";

export function parseReadFormat(format: unknown): ReadFormat {
  if (format === undefined) return "text";
  if (format === "text" || format === "bytes" || format === "stream") return format;
  throw invalid(`format must be "text", "bytes" or "stream", not ${JSON.stringify(format)}`);
}

const E = constants.errno;

/**
 * The error code for an errno the supervisor answered a file request with. Refusals by
 * the confinement (another filesystem, a magic link) and by permissions are
 * `permission_denied`; what the caller asked for being the wrong kind of thing is
 * `invalid_argument`.
 */
export function fileErrorCode(errno: number): ErrorCode {
  switch (errno) {
    case E.ENOENT:
      return "not_found";
    case E.EXDEV: // outside the sandbox's own filesystem: /proc, /sys, /dev, binds
    case E.ELOOP: // a magic link, or a symlink loop
    case E.EACCES:
    case E.EPERM:
    case E.EROFS:
    case E.EBUSY: // a mount point
      return "permission_denied";
    case E.EFBIG:
      return "too_large";
    case E.ENOSPC:
    case E.EDQUOT:
      return "not_enough_space";
    case E.EAGAIN:
      return "busy";
    case E.EINVAL:
    case E.EISDIR:
    case E.ENOTDIR:
    case E.ENOTEMPTY:
    case E.EEXIST:
    case E.ENAMETOOLONG:
    case E.E2BIG:
    case E.ENXIO:
      return "invalid_argument";
    default:
      return "runtime_failed";
  }
}

/** A CorralError for a failed file request, keeping the supervisor's one-line message. */
export function fileError(errno: number, message: string): CorralError {
  const code = fileErrorCode(errno);
  const hints: Partial<Record<ErrorCode, string>> = {
    too_large: "raise the session's maxFileBytes, or the sandbox's --file-size limit",
    not_enough_space: "the sandbox's writable layer is full (its --disk or --inodes limit)",
  };
  return new CorralError(code, message, hints[code]);
}
