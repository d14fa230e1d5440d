/**
 * One-shot execution: create a sandbox, run one program in it, bring files out, destroy
 * it. This is the path `corral run` and the demo take; sessions reuse its pieces.
 */
import { createHash } from "node:crypto";
import type { Outcome } from "../audit/events.js";
import { asCorralError } from "../core/errors.js";
import { argvFor, codeFileFor } from "../core/languages.js";
import type { Limits } from "../core/limits.js";
import type { HostInput } from "../core/run-options.js";
import type { ImageRef, Language, TestOnlyWeakening } from "../core/sandbox.js";
import { type ChangedFile, collectChangedFiles } from "./files-out.js";
import type { Host } from "./host.js";
import { type ExecRequest, PhaseTimer, Sandbox } from "./sandbox.js";

/** What runs: code in a language (written to a file, run by its interpreter), or an argv as is. */
export type RunProgram =
  | { language: Language; code: string; args?: readonly string[]; argv?: undefined }
  | { argv: string[]; language?: undefined; code?: undefined };

/** Everything of a one-shot run but the program. */
export interface RunOptions {
  image: ImageRef;
  limits: Limits;
  outDir?: string;
  /** Files placed in the sandbox before the code runs (path inside, bytes). */
  inputs?: { path: string; data: Buffer }[];
  /** Host files and directories copied into the writable layer before the sandbox starts. */
  hostInputs?: readonly HostInput[];
  /** Added to the image's environment (and HOME, LANG). */
  env?: Record<string, string>;
  /** The working directory (default /work); made if missing. */
  cwd?: string;
  /** The program's stdin (default /dev/null). */
  stdin?: ExecRequest["stdin"];
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  testOnly?: TestOnlyWeakening;
  /** Called once the sandbox exists (the CLI uses it to clean up on Ctrl-C). */
  onSandbox?: (sandbox: Sandbox) => void;
  /** Where to record how long each step took (the benchmark's breakdown). */
  phases?: PhaseTimer;
}

export type RunCodeRequest = RunProgram & RunOptions;

export interface StreamResult {
  text: string;
  /** Present when the bytes are not valid UTF-8: the exact bytes kept. */
  base64?: string;
  bytes: number;
  truncated: boolean;
}

export interface RunResult {
  sandbox: string;
  image: string;
  /** The language of the code, or null for a program run by its argv. */
  language: Language | null;
  argv?: string[];
  exitCode: number;
  killed: "timeout" | "oom" | null;
  sandboxKilled: boolean;
  durationMs: number;
  cpuMs: number | null;
  peakMemoryBytes: number | null;
  stdout: StreamResult;
  stderr: StreamResult;
  files: ChangedFile[];
  /** The run wrote more files (or longer names) than `files` lists: see files-out.ts. */
  filesTruncated?: boolean;
  limits: Limits;
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * How many bytes at the end of `b` are the start of a UTF-8 sequence that the cap cut
 * off (0 when `b` ends on a character boundary). Only a lead byte followed by fewer
 * continuation bytes than it announces counts: invalid bytes are left for the caller.
 */
export function incompleteUtf8Tail(b: Buffer): number {
  for (let back = 1; back <= Math.min(3, b.length); back++) {
    const byte = b[b.length - back]!;
    if ((byte & 0xc0) === 0x80) continue; // a continuation byte: look further back
    const need =
      byte >= 0xc2 && byte <= 0xdf
        ? 2
        : byte >= 0xe0 && byte <= 0xef
          ? 3
          : byte >= 0xf0 && byte <= 0xf4
            ? 4
            : 1;
    return need > back ? back : 0;
  }
  return 0;
}

export function streamResult(bytes: Buffer, total: number): StreamResult {
  const out: StreamResult = { text: "", bytes: total, truncated: total > bytes.length };
  // The cap counts bytes, so it may cut a character in two: drop the cut-off head of that
  // character rather than turn it into U+FFFD (the byte count still says what was sent).
  if (out.truncated) bytes = bytes.subarray(0, bytes.length - incompleteUtf8Tail(bytes));
  try {
    out.text = strictUtf8.decode(bytes);
  } catch {
    // Keep the raw bytes too, so nothing is lost; the text has U+FFFD where bytes were bad.
    out.text = bytes.toString("utf8");
    out.base64 = bytes.toString("base64");
  }
  return out;
}

/** At most this many of a run's files are named in its exec event, each path at most so long. */
const MAX_FILES_IN_EVENT = 1000;
const MAX_PATH_IN_EVENT = 1024;

/** A run's files for its exec event: bounded, with the full count. */
function filesForEvent(files: readonly ChangedFile[]): Record<string, unknown> {
  return {
    files: files.slice(0, MAX_FILES_IN_EVENT).map((f) => ({
      path: f.path.length > MAX_PATH_IN_EVENT ? `${f.path.slice(0, MAX_PATH_IN_EVENT)}...` : f.path,
      size: f.size,
      sha256: f.sha256,
    })),
    ...(files.length > MAX_FILES_IN_EVENT ? { filesTotal: files.length } : {}),
  };
}

export async function runCode(host: Host, req: RunCodeRequest): Promise<RunResult> {
  const started = performance.now();
  const cwd = req.cwd ?? "/work";
  const phases = req.phases ?? new PhaseTimer();
  const sandbox = await Sandbox.create(host, {
    image: req.image,
    limits: req.limits,
    ...(req.hostInputs && req.hostInputs.length > 0 ? { inputs: req.hostInputs } : {}),
    ...(cwd !== "/work" ? { workdir: cwd } : {}),
    ...(req.testOnly ? { testOnly: req.testOnly } : {}),
  });
  for (const [name, ms] of Object.entries(sandbox.createPhases)) phases.ms[`create.${name}`] = ms;
  phases.ms.create = Math.round((performance.now() - started) * 100) / 100;
  req.onSandbox?.(sandbox);
  try {
    // The run's record (kind exec), whether it ran or not. Deferred: committed with the
    // sandbox.destroy event, which the finally below always records before anything goes
    // back to the caller. A program's name, not its arguments (they may hold secrets).
    const recordExec = (details: Record<string, unknown>, outcome: Outcome) =>
      host.events.defer({
        principal: host.config.principal,
        sandbox: sandbox.id,
        kind: "exec",
        details: {
          ...(req.argv !== undefined
            ? { program: req.argv[0], argc: req.argv.length }
            : { language: req.language, ...(req.args?.length ? { argc: req.args.length } : {}) }),
          image: req.image.digest,
          ...details,
        },
        outcome,
      });
    // The code file and inputs go out with the program, not a round trip before it: the
    // supervisor handles requests in order, each write whole before the next request, so
    // the program starts only once they are written, and nothing of the user's has run
    // while they are (Sandbox.writeFile's condition). A failed write is the error to
    // report; the program, missing its file, fails at once and is waited for first.
    const writes: Promise<void>[] = [];
    const argv = phases.timeSync("write_code", () => {
      if (req.argv !== undefined) return req.argv;
      const codeFile = codeFileFor(req.language);
      writes.push(sandbox.writeFile(codeFile, req.code));
      return [...argvFor(req.language, codeFile), ...(req.args ?? [])];
    });
    for (const input of req.inputs ?? []) writes.push(sandbox.writeFile(input.path, input.data));
    const written = Promise.all(writes).then(
      () => null,
      (err: unknown) => err,
    );
    const outcome = await phases.time("exec", async () => {
      const ran = sandbox.exec({
        argv,
        cwd,
        timeoutMs: req.limits.timeoutMs,
        outputCapBytes: req.limits.outputCapBytes,
        ...(req.env ? { env: req.env } : {}),
        ...(req.stdin !== undefined ? { stdin: req.stdin } : {}),
        ...(req.onStdout ? { onStdout: req.onStdout } : {}),
        ...(req.onStderr ? { onStderr: req.onStderr } : {}),
      });
      const writeError = await written;
      if (writeError !== null) {
        await ran.catch(() => undefined);
        throw writeError;
      }
      try {
        return await ran;
      } catch (err) {
        // It never ran (not found, not executable, a bad working directory): recorded too,
        // with why.
        const e = asCorralError(err);
        recordExec(
          { started: false, error: { code: e.code, message: e.message.slice(0, 1024) } },
          "error",
        );
        throw err;
      }
    });
    // Files are taken only after every process in the sandbox is gone.
    const stopPhases = new PhaseTimer();
    await phases.time("stop", () => sandbox.stop(stopPhases));
    for (const [name, ms] of Object.entries(stopPhases.ms)) phases.ms[`stop.${name}`] = ms;
    // What was put in and left as it was is not a file the run made.
    // Keys relative to /work: inputs elsewhere are not in the walk anyway.
    const relToWork = (p: string) => (p.startsWith("/work/") ? p.slice("/work/".length) : null);
    const unchangedInputs = new Set(
      [
        ...(req.inputs ?? []).map((i) => ({
          path: i.path,
          sha256: createHash("sha256").update(i.data).digest("hex"),
        })),
        ...sandbox.copiedInputs,
      ].flatMap((c) => {
        const rel = relToWork(c.path);
        return rel === null ? [] : [`${rel}\0${c.sha256}`];
      }),
    );
    const durationMs = Math.round((performance.now() - started) * 10) / 10;
    const cpuMs = outcome.usage.cpuUs === null ? null : Math.round(outcome.usage.cpuUs / 100) / 10;
    // Made even if bringing the files out fails, so no run that happened goes unrecorded.
    const recordRun = (files: readonly ChangedFile[], filesError?: string) =>
      recordExec(
        {
          ...(req.env ? { env: Object.keys(req.env) } : {}),
          ...(req.hostInputs?.length ? { hostInputs: req.hostInputs.map((i) => i.dest) } : {}),
          exitCode: outcome.exitCode,
          killed: outcome.killed,
          sandboxKilled: outcome.sandboxKilled,
          durationMs,
          cpuMs,
          peakMemoryBytes: outcome.usage.peakMemoryBytes,
          stdoutBytes: outcome.stdout.total,
          stderrBytes: outcome.stderr.total,
          ...filesForEvent(files),
          ...(filesError !== undefined ? { filesError: filesError.slice(0, 1024) } : {}),
        },
        outcome.killed ?? (outcome.exitCode === 0 ? "ok" : "error"),
      );
    let files: ChangedFile[];
    const walk = { truncated: false };
    try {
      files = await phases.time("files", () =>
        collectChangedFiles(sandbox.upperPath("work"), {
          ...(req.outDir ? { outDir: req.outDir } : {}),
          unchanged: unchangedInputs,
          report: walk,
          // The host never takes in more than the sandbox could hold (sparse files!).
          totalCapBytes: req.limits.diskBytes,
        }),
      );
    } catch (err) {
      recordRun([], err instanceof Error ? err.message : String(err));
      throw err;
    }
    recordRun(files);
    const result: RunResult = {
      sandbox: sandbox.id,
      image: req.image.digest,
      language: req.language ?? null,
      ...(req.argv !== undefined ? { argv: req.argv } : {}),
      exitCode: outcome.exitCode,
      killed: outcome.killed,
      sandboxKilled: outcome.sandboxKilled,
      durationMs,
      cpuMs,
      peakMemoryBytes: outcome.usage.peakMemoryBytes,
      stdout: streamResult(outcome.stdout.bytes(), outcome.stdout.total),
      stderr: streamResult(outcome.stderr.bytes(), outcome.stderr.total),
      files,
      ...(walk.truncated ? { filesTruncated: true } : {}),
      limits: req.limits,
    };
    return result;
  } finally {
    const destroyPhases = new PhaseTimer();
    await phases.time("destroy", () => sandbox.destroy(destroyPhases));
    for (const [name, ms] of Object.entries(destroyPhases.ms)) phases.ms[`destroy.${name}`] = ms;
  }
}
