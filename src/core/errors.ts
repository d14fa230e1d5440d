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
