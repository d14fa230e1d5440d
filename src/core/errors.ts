/**
 * The one error type of Corral. Every failure a user can see is a CorralError with a
 * stable code, a one-line message and a hint. The CLI maps codes to exit codes and the
 * API (later) maps them to HTTP statuses, each in exactly one place.
 */
export type ErrorCode =
  | "invalid_argument" // bad input from the caller: unknown language, malformed limit, bad path
  | "not_found" // a named thing (image, file, sandbox) does not exist
  | "prerequisite_missing" // the host lacks something: runc, debootstrap, root, user namespaces
  | "image_not_built" // the requested image is not in the image cache
  | "self_check_failed" // the sandbox's runtime self-check refused it
  | "runtime_failed" // runc or the kernel failed to create or run the sandbox
  | "supervisor_failed" // the in-sandbox supervisor broke the protocol or vanished
  | "build_failed" // an image build failed
  | "busy" // a resource is held by someone else
  | "permission_denied" // refused by the sandbox's confinement or permissions (a path in /proc)
  | "too_large" // over a size cap (a file larger than the file API's maxFileBytes)
  | "not_enough_space" // the sandbox's disk or inode limit is reached
  | "program_not_found" // the program to run is not in the image (exit 127, as docker and sh)
  | "program_not_executable" // the program is there but cannot be executed (exit 126)
  | "internal"; // a bug: should never happen

export class CorralError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  override readonly cause: unknown;

  constructor(code: ErrorCode, message: string, hint?: string, cause?: unknown) {
    super(oneLine(message));
    this.name = "CorralError";
    this.code = code;
    this.hint = hint === undefined ? undefined : oneLine(hint);
    this.cause = cause;
  }
}

/** Error messages are one line: a multi-line message from a tool is folded. */
export function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, " ").trim();
}

/** Anything thrown, as a CorralError (unknown errors become `internal`). */
export function asCorralError(err: unknown): CorralError {
  if (err instanceof CorralError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new CorralError("internal", `internal error: ${message}`, undefined, err);
}

/**
 * Text from outside Corral (an archive's member names and header fields) made safe for a
 * one-line message: a terminal never receives its control characters (an ESC could
 * rewrite the screen), and invisible ones (bidi overrides) cannot hide what it says.
 * Printable ASCII and printable Unicode letters, marks, digits, punctuation and symbols
 * stay; `\n`, `\t` and `\r` are written so; other bytes below 256 as `\xNN`, anything else
 * as `\u{...}`. A backslash is doubled, so the escapes cannot be forged.
 */
export function escapeUntrusted(text: string): string {
  let out = "";
  for (const ch of text) {
    const cp = ch.codePointAt(0) ?? 0;
    if (ch === "\\") out += "\\\\";
    else if (cp >= 0x20 && cp < 0x7f) out += ch;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\r") out += "\\r";
    else if (cp >= 0xa0 && /^[\p{L}\p{M}\p{N}\p{P}\p{S}]$/u.test(ch)) out += ch;
    else if (cp < 0x100) out += `\\x${cp.toString(16).padStart(2, "0")}`;
    else out += `\\u{${cp.toString(16)}}`;
  }
  return out;
}

/** `escapeUntrusted` in double quotes (a `"` inside is escaped too), like JSON.stringify. */
export function quoteUntrusted(text: string): string {
  return `"${escapeUntrusted(text).replace(/"/g, '\\"')}"`;
}

/** Raw bytes (a header field of unknown encoding) for a message: printable ASCII, else `\xNN`. */
export function quoteBytes(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) {
    if (b === 0x5c) out += "\\\\";
    else if (b === 0x22) out += '\\"';
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += `\\x${b.toString(16).padStart(2, "0")}`;
  }
  return `"${out}"`;
}

/**
 * A misspelt option must not be ignored in silence (`{ memory: "1g" }` would leave the
 * default 512 MiB): unknown keys are refused with the list of known ones.
 */
export function checkKeys(obj: object, known: readonly string[], what: string): void {
  for (const k of Object.keys(obj)) {
    if (!known.includes(k)) {
      throw new CorralError(
        "invalid_argument",
        `unknown ${what} key "${k}": expected one of ${known.join(", ")}`,
      );
    }
  }
}
