/**
 * `corral run`: one program in a fresh sandbox, streamed live, then destroyed. The program
 * is code in a language (`--lang L FILE | -c CODE`) or, Docker-style, an argv run directly
 * with no shell: the image's Entrypoint followed by `-- ARGS...` or else by its Cmd.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import type { CorralConfig } from "../core/config.js";
import { ensureDir } from "../core/dirs.js";
import { asCorralError, CorralError, escapeUntrusted } from "../core/errors.js";
import { parseLanguage, SQL_DATABASE } from "../core/languages.js";
import { formatBytes, LIMIT_FLAG_KEYS, type LimitFlags, limitsFromFlags } from "../core/limits.js";
import {
  chooseRunProgram,
  imageProgramArgv,
  parseEnvFlags,
  parseWorkdir,
  planHostInputs,
} from "../core/run-options.js";
import type { ChangedFile } from "../sandbox/files-out.js";
import { collectGarbage } from "../sandbox/gc.js";
import { openHost } from "../sandbox/host.js";
import { checkHostInput } from "../sandbox/host-inputs.js";
import { loadImageRef } from "../sandbox/image-ref.js";
import { checkHostPrerequisites } from "../sandbox/prerequisites.js";
import { type RunProgram, type RunResult, runCode } from "../sandbox/run-code.js";
import type { Sandbox } from "../sandbox/sandbox.js";
import { EXIT_OOM, EXIT_TIMEOUT, onOutputClosed, outputExitCode } from "./output.js";

export interface RunFlags extends LimitFlags {
  lang?: string;
  code?: string;
  image: string;
  env?: string[];
  workdir?: string;
  interactive?: boolean;
  in?: string[];
  db?: string;
  out?: string;
  json?: boolean;
}

async function readCode(source: { file: string } | { code: string }): Promise<string> {
  if ("code" in source) return source.code;
  const { file } = source;
  try {
    if (file === "-") {
      const chunks: Buffer[] = [];
      for await (const c of process.stdin) chunks.push(c as Buffer);
      return Buffer.concat(chunks).toString("utf8");
    }
    return await readFile(file, "utf8");
  } catch (err) {
    throw new CorralError(
      "invalid_argument",
      `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
}

/** Why a file the run wrote was not copied out, in words. */
const SKIP_REASONS: Record<NonNullable<ChangedFile["skipped"]>, string> = {
  too_large: "larger than the per-file cap",
  unsafe_name: "its name cannot be written safely on the host",
  unchanged: "an input the run left unchanged",
  total_cap: "past the total cap (the disk limit)",
  too_deep: "nested too deep",
  write_failed: "the host could not write it",
};

/** The exit code `corral run` returns for a result: the program's, or 124/137 when killed. */
export function exitCodeForResult(r: Pick<RunResult, "killed" | "exitCode">): number {
  if (r.killed === "timeout") return EXIT_TIMEOUT;
  if (r.killed === "oom") return EXIT_OOM;
  return r.exitCode;
}

/**
 * `corral run`. `operands` are the positional arguments; `argvAfterDash` what followed
 * `--` on the command line (null without one): the program to run directly.
 */
export async function runCommandLine(
  config: CorralConfig,
  operands: readonly string[],
  argvAfterDash: readonly string[] | null,
  flags: RunFlags,
): Promise<number> {
  try {
    return await runChecked(config, operands, argvAfterDash, flags);
  } catch (err) {
    // Any failure, refused before it ran (bad flags, no such image...) or during the run:
    // the one line on stderr comes from the caller; with --json, stdout says it too, so a
    // caller parsing stdout gets it there.
    if (flags.json) {
      const e = asCorralError(err);
      const error = { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}) };
      process.stdout.write(`${JSON.stringify({ error }, null, 2)}\n`);
    }
    throw err;
  }
}

async function runChecked(
  config: CorralConfig,
  operands: readonly string[],
  argvAfterDash: readonly string[] | null,
  flags: RunFlags,
): Promise<number> {
  // Validate everything the user typed before touching the host.
  const choice = chooseRunProgram({
    operands,
    argvAfterDash,
    lang: flags.lang,
    code: flags.code,
    interactive: flags.interactive,
  });
  const language = choice.kind === "code" ? parseLanguage(choice.language) : undefined;
  if (language === "sql" && choice.kind === "code" && choice.args.length > 0) {
    throw new CorralError(
      "invalid_argument",
      "SQL takes no arguments: nothing may follow -- with --lang sql",
    );
  }
  const env = parseEnvFlags(flags.env ?? []);
  const workdir = flags.workdir !== undefined ? parseWorkdir(flags.workdir) : undefined;
  const hostInputs = planHostInputs(
    { in: flags.in ?? [], ...(flags.db !== undefined ? { db: flags.db } : {}) },
    process.cwd(),
  );
  const limits = limitsFromFlags(
    Object.fromEntries(
      LIMIT_FLAG_KEYS.flatMap((k) => (flags[k] !== undefined ? [[k, flags[k]]] : [])),
    ) as LimitFlags,
  );
  const code = choice.kind === "code" ? await readCode(choice.source) : undefined;
  for (const input of hostInputs) {
    await checkHostInput(
      input,
      input.dest === SQL_DATABASE && input.source === flags.db ? "--db" : "--in",
    );
  }
  // --out: absolute from here on, and usable before anything runs (not a file, not under
  // /proc): a run that could not deliver its files should not start.
  const outDir = flags.out !== undefined ? path.resolve(flags.out) : undefined;
  if (outDir !== undefined) await ensureDir(outDir, "choose another --out directory", 0o755);
  await checkHostPrerequisites(config, limits);
  const image = await loadImageRef(config, flags.image);
  // A program (not code) runs as `docker run` runs it: after the image's Entrypoint, in its
  // WorkingDir. Code runs in /work, where --in, --db and --out work.
  const program: RunProgram =
    choice.kind === "code"
      ? { language: language!, code: code!, args: choice.args }
      : {
          argv: imageProgramArgv(image, flags.image, choice.kind === "argv" ? choice.argv : null),
        };
  const cwd = workdir ?? (choice.kind === "code" ? undefined : image.workingDir);
  const host = await openHost(config);
  let active: Sandbox | null = null;
  let creating = false;
  let interrupted: NodeJS.Signals | null = null;
  const finishInterrupted = (sandbox: Sandbox | null) => {
    const signal = interrupted ?? "SIGTERM";
    const done = () => {
      host.close();
      process.exit(signal === "SIGINT" ? 130 : signal === "SIGPIPE" ? outputExitCode() : 143);
    };
    if (sandbox) sandbox.destroy().then(done, done);
    else done();
  };
  // Ctrl-C, SIGTERM and output that cannot be delivered destroy the sandbox before
  // exiting. While it is being created, the signal waits for creation to end (or fail,
  // which cleans up after itself).
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = signal;
    if (active || !creating) finishInterrupted(active);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  // Our output cannot be delivered any more (`| head`, `> /dev/full`): the program goes,
  // as SIGPIPE would end it.
  const offOutputClosed = onOutputClosed(() => onSignal("SIGPIPE"));
  try {
    await collectGarbage(host, { dryRun: false });
    if (interrupted) finishInterrupted(null);
    creating = true;
    const result = await runCode(host, {
      ...program,
      image,
      limits,
      ...(Object.keys(env).length > 0 ? { env } : {}),
      ...(cwd !== undefined ? { cwd } : {}),
      ...(hostInputs.length > 0 ? { hostInputs } : {}),
      // -i: the CLI's stdin, forwarded as it arrives (the program sees its end when ours ends).
      ...(flags.interactive ? { stdin: process.stdin } : {}),
      ...(outDir !== undefined ? { outDir } : {}),
      onSandbox: (s) => {
        active = s;
        creating = false;
        if (interrupted) finishInterrupted(s);
      },
      ...(flags.json
        ? {}
        : {
            onStdout: (c: Buffer) => process.stdout.write(c),
            onStderr: (c: Buffer) => process.stderr.write(c),
          }),
    });
    active = null;
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    } else {
      for (const [name, s] of [
        ["stdout", result.stdout],
        ["stderr", result.stderr],
      ] as const) {
        if (s.truncated) {
          process.stderr.write(
            `corral: ${name} truncated: kept ${formatBytes(limits.outputCapBytes)} of ${s.bytes} bytes\n`,
          );
        }
      }
      if (result.killed === "timeout") {
        process.stderr.write(`corral: killed: timeout after ${limits.timeoutMs / 1000}s\n`);
      } else if (result.killed === "oom") {
        process.stderr.write(
          `corral: killed: out of memory (limit ${formatBytes(limits.memoryBytes)})\n`,
        );
      }
      if (outDir !== undefined) {
        const copied = result.files.filter((f) => f.copied);
        if (copied.length > 0)
          process.stderr.write(`corral: copied ${copied.length} file(s) to ${flags.out}\n`);
        const skipped = result.files.filter((f) => f.skipped !== undefined);
        for (const f of skipped.slice(0, 10)) {
          // A name from the sandbox: escaped, so it cannot move the terminal or fake a line.
          const why = SKIP_REASONS[f.skipped!] + (f.error ? `: ${f.error}` : "");
          process.stderr.write(`corral: not copied: ${escapeUntrusted(f.path)} (${why})\n`);
        }
        if (skipped.length > 10) {
          process.stderr.write(`corral: not copied: ${skipped.length - 10} more (see --json)\n`);
        }
        if (result.filesTruncated) {
          process.stderr.write(
            `corral: not copied: the rest (a run's files are listed up to ${result.files.length})\n`,
          );
        }
      }
    }
    return exitCodeForResult(result);
  } catch (err) {
    if (interrupted) finishInterrupted(null);
    throw err;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    offOutputClosed();
    // The program is gone: stop reading our stdin, or an open pipe keeps the CLI alive.
    if (flags.interactive) process.stdin.destroy();
    // Let the layer pool finish the entry it is making (it started while the sandbox was
    // being created, so this is short), so that the next run finds one ready.
    await host.layerPool?.settle();
    host.close();
  }
}
