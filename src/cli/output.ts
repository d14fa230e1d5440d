/** The CLI's one place that maps errors to exit codes and prints them. */
import { asCorralError, CorralError, type ErrorCode } from "../core/errors.js";

/** Corral's own failures exit 125, as `docker run` does; the program's codes pass through. */
export const EXIT_CORRAL_ERROR = 125;
export const EXIT_TIMEOUT = 124;
export const EXIT_OOM = 137;

/** A program that could not start exits as `docker run` (and a shell) has it exit. */
export const EXIT_NOT_EXECUTABLE = 126;
export const EXIT_NOT_FOUND = 127;

const EXIT_CODES: Partial<Record<ErrorCode, number>> = {
  program_not_found: EXIT_NOT_FOUND,
  program_not_executable: EXIT_NOT_EXECUTABLE,
};

export function exitCodeFor(err: CorralError): number {
  return EXIT_CODES[err.code] ?? EXIT_CORRAL_ERROR;
}

/** A message of at most 600 characters: a path from a sandbox can be kilobytes long. */
function shortened(message: string): string {
  const oneLine = message.replace(/\s*\n\s*/g, "; ");
  return oneLine.length <= 600 ? oneLine : `${oneLine.slice(0, 400)}…${oneLine.slice(-150)}`;
}

/** One line on stderr: what is wrong and how to fix it. The stack goes to the debug log only. */
export function reportError(err: unknown): number {
  const e = asCorralError(err);
  const hint = e.hint ? ` (${e.hint})` : "";
  process.stderr.write(`corral: ${shortened(e.message)}${hint}\n`);
  if (process.env.CORRAL_DEBUG && e.cause instanceof Error && e.cause.stack) {
    process.stderr.write(`${e.cause.stack}\n`);
  } else if (process.env.CORRAL_DEBUG && e.stack) {
    process.stderr.write(`${e.stack}\n`);
  }
  return exitCodeFor(e);
}

export { CorralError };

/** What a command exits with when its reader went away (as a SIGPIPE death would). */
export const EXIT_SIGPIPE = 141;

/** Why output could not be delivered (the first error), or null while it can. */
let outputError: NodeJS.ErrnoException | null = null;
const outputClosedListeners = new Set<() => void>();

/**
 * Output that can no longer be delivered is not a crash: a reader that went away
 * (`corral run ... | head -1`: EPIPE) or a destination that fails (`> /dev/full`:
 * ENOSPC, EIO...). Node would throw such an error from the stream, with a stack trace
 * and, in `corral run`, the sandbox left behind. The first error on stdout or stderr tells
 * the listeners (run ends the program, as SIGPIPE would); later output is dropped. A
 * command that would otherwise exit 0 does not: it exits 141 for a reader gone, 125 (with
 * one line on the other stream, if it still works) for a destination that failed.
 */
export function watchOutputPipes(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (err: NodeJS.ErrnoException) => {
      if (outputError) return;
      outputError = err;
      if (err.code !== "EPIPE") {
        const other = stream === process.stdout ? process.stderr : process.stdout;
        const name = stream === process.stdout ? "stdout" : "stderr";
        other.write(`corral: cannot write to ${name}: ${err.code ?? err.message}\n`);
      }
      for (const listener of outputClosedListeners) listener();
    });
  }
  process.on("exit", () => {
    if (outputError && !process.exitCode) process.exitCode = outputExitCode();
  });
}

/** The exit code for output that could not be delivered (see watchOutputPipes). */
export function outputExitCode(): number {
  return outputError?.code === "EPIPE" ? EXIT_SIGPIPE : EXIT_CORRAL_ERROR;
}

/** Call `listener` when output can no longer be delivered (at once if it already cannot). */
export function onOutputClosed(listener: () => void): () => void {
  if (outputError) listener();
  outputClosedListeners.add(listener);
  return () => outputClosedListeners.delete(listener);
}

/** Rows as aligned columns (two spaces apart; the last column is not padded). */
export function formatTable(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const row of rows) {
    for (const [i, cell] of row.entries()) widths[i] = Math.max(widths[i] ?? 0, cell.length);
  }
  return rows
    .map((row) =>
      row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join("  "),
    )
    .join("\n");
}
