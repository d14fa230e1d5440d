/**
 * The options of `corral run` beyond the limits, as pure functions from what the user
 * typed to what a sandbox needs: environment variables, the working directory, host files
 * to copy in, and which program runs. Every refusal is a one-line CorralError.
 */
import path from "node:path";
import { CorralError } from "./errors.js";
import { SQL_DATABASE } from "./languages.js";

/** The directory code runs in, and where relative sandbox paths are taken from. */
export const WORK_DIR = "/work";

/** A host file or directory to copy into the sandbox's writable layer before it starts. */
export interface HostInput {
  /** Host path, as given (resolved against the CLI's working directory when read). */
  source: string;
  /** Absolute, normalised path inside the sandbox. */
  dest: string;
}

/**
 * Where nothing may be copied: these are mounted over when the sandbox starts (its own
 * /proc, /sys and /dev, the supervisor and kernel drivers), so a copy would be hidden or
 * would stand in the way of a mount.
 */
const RESERVED = ["/proc", "/sys", "/dev", "/.corral"];

function invalid(message: string): CorralError {
  return new CorralError("invalid_argument", message);
}

/** A variable name as a shell and execve accept it: letters, digits and _. */
export const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** `--env K=V` (repeatable) → the variables; the value may be empty or contain "=". */
export function parseEnvFlags(list: readonly string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const item of list) {
    const eq = item.indexOf("=");
    const key = eq < 0 ? item : item.slice(0, eq);
    if (eq < 0 && ENV_NAME.test(key)) {
      // Docker would copy the host's value here; a sandbox gets nothing of the host's.
      throw invalid(
        `--env ${key} has no value: give ${key}=VALUE (Corral never reads it from the host)`,
      );
    }
    if (!ENV_NAME.test(key)) {
      throw invalid(
        `--env ${JSON.stringify(item)}: expected NAME=VALUE with NAME of letters, digits and _ (not starting with a digit)`,
      );
    }
    env[key] = item.slice(eq + 1);
  }
  return env;
}

/**
 * A path inside the sandbox, absolute or relative to /work, normalised. ".." is refused
 * (not resolved): it is never needed, and refusing it keeps what was meant obvious.
 */
export function sandboxPath(text: string, what: string): string {
  if (text === "") throw invalid(`${what}: empty path`);
  if (text.includes("\0")) throw invalid(`${what}: the path contains a NUL byte`);
  const parts = text.split("/");
  if (parts.includes("..")) throw invalid(`${what}: ".." is not allowed in sandbox paths`);
  const abs = text.startsWith("/") ? text : `${WORK_DIR}/${text}`;
  const normal = path.posix.normalize(abs).replace(/\/+$/, "");
  return normal === "" ? "/" : normal;
}

function isReserved(p: string): string | undefined {
  return RESERVED.find((r) => p === r || p.startsWith(`${r}/`));
}

/** A destination for copied files: a sandbox path that is not / and not mounted over. */
export function inputDestination(text: string, what: string): string {
  const dest = sandboxPath(text, what);
  if (dest === "/") throw invalid(`${what}: cannot copy onto / itself`);
  const reserved = isReserved(dest);
  if (reserved) {
    throw invalid(`${what}: ${reserved} is mounted over when the sandbox starts`);
  }
  return dest;
}

/**
 * `--in PATH[:DEST]`: the host path, and where it goes (DEST, else /work/<basename>).
 * The split is at the last ":", so a host path with a ":" needs an explicit DEST.
 */
export function parseInFlag(text: string, cwd: string): HostInput {
  const colon = text.lastIndexOf(":");
  const source = colon < 0 ? text : text.slice(0, colon);
  const destText = colon < 0 ? undefined : text.slice(colon + 1);
  if (source === "") throw invalid(`--in ${JSON.stringify(text)}: no host path before the ":"`);
  if (destText !== undefined) {
    return { source, dest: inputDestination(destText, `--in ${text}`) };
  }
  const base = path.basename(path.resolve(cwd, source));
  if (base === "" || base === "/") {
    throw invalid(`--in ${text}: give a destination (--in ${text}:DEST)`);
  }
  return { source, dest: `${WORK_DIR}/${base}` };
}

/** Every host input of a run: the --in flags, then --db as /work/db.sqlite. No two may collide. */
export function planHostInputs(
  flags: { in?: readonly string[]; db?: string },
  cwd: string,
): HostInput[] {
  const inputs = (flags.in ?? []).map((t) => parseInFlag(t, cwd));
  if (flags.db !== undefined) {
    if (flags.db === "") throw invalid("--db: empty path");
    inputs.push({ source: flags.db, dest: SQL_DATABASE });
  }
  for (const [i, a] of inputs.entries()) {
    for (const b of inputs.slice(i + 1)) {
      if (a.dest === b.dest || b.dest.startsWith(`${a.dest}/`) || a.dest.startsWith(`${b.dest}/`)) {
        throw invalid(
          `${a.source} and ${b.source} would both be copied to ${a.dest === b.dest ? a.dest : `${a.dest} / ${b.dest}`}`,
        );
      }
    }
  }
  return inputs;
}

/**
 * What `corral run` runs: code in a language; the arguments after `--` (a program's argv,
 * after the image's Entrypoint if it has one); or, given neither, what the image runs by
 * default (its Entrypoint and Cmd), as `docker run IMAGE [ARGS...]` does.
 */
export type RunProgramChoice =
  | {
      kind: "code";
      language: string;
      source: { file: string } | { code: string };
      /** The code's own arguments (what followed --): sys.argv[1:], $1..., commandArgs(). */
      args: string[];
    }
  | { kind: "argv"; argv: string[] }
  | { kind: "image" };

const LANGUAGE_CHOICES = "python|r|shell|sql";

/**
 * From the operands and flags to the one program to run. `argvAfterDash` is what followed
 * `--` on the command line (null when there was none): the program to run, or, with
 * --lang, the code's own arguments.
 */
export function chooseRunProgram(input: {
  operands: readonly string[];
  argvAfterDash: readonly string[] | null;
  lang?: string | undefined;
  code?: string | undefined;
  interactive?: boolean | undefined;
}): RunProgramChoice {
  const { operands, argvAfterDash, lang, code } = input;
  if (argvAfterDash !== null && lang === undefined) {
    if (code !== undefined) {
      throw invalid(`-c needs --lang ${LANGUAGE_CHOICES} (what follows -- is then its arguments)`);
    }
    if (operands.length > 0) {
      throw invalid(
        `unexpected ${JSON.stringify(operands[0])} before --: give the program after --`,
      );
    }
    if (argvAfterDash.length === 0 || argvAfterDash[0] === "") {
      throw invalid("nothing after --: give the program to run (-- PROGRAM ARGS...)");
    }
    return { kind: "argv", argv: [...argvAfterDash] };
  }
  if (lang === undefined) {
    if (code !== undefined) throw invalid(`-c needs --lang ${LANGUAGE_CHOICES}`);
    if (operands.length > 0) {
      throw invalid(
        `${JSON.stringify(operands[0])} needs --lang ${LANGUAGE_CHOICES} to run as code; a program and its arguments go after -- (corral run -- PROGRAM ARGS...)`,
      );
    }
    return { kind: "image" };
  }
  if (operands.length > 1) {
    throw invalid(
      `too many arguments: ${operands.join(" ")} (the code's own arguments go after --: corral run --lang ${lang} ${operands[0]} -- ${operands.slice(1).join(" ")})`,
    );
  }
  const args = [...(argvAfterDash ?? [])];
  const file = operands[0];
  if (code !== undefined && file !== undefined) {
    throw invalid("give either a FILE or -c CODE, not both");
  }
  if (code !== undefined) return { kind: "code", language: lang, source: { code }, args };
  if (file === undefined) throw invalid("no code: give a FILE or -c CODE");
  if (file === "-" && input.interactive) {
    throw invalid("-i forwards standard input to the program; it cannot also be the code (FILE -)");
  }
  return { kind: "code", language: lang, source: { file }, args };
}

/** `--workdir DIR`: absolute or relative to /work, no "..". */
export function parseWorkdir(text: string): string {
  return sandboxPath(text, `--workdir ${text}`);
}

/**
 * The argv a program choice runs in an image, as `docker run IMAGE [ARGS...]` builds it:
 * the image's Entrypoint, then the arguments given after `--`, or else its Cmd. `args` is
 * null when nothing followed `--` (no `--` at all).
 */
export function imageProgramArgv(
  image: { entrypoint?: readonly string[]; cmd?: readonly string[] },
  imageName: string,
  args: readonly string[] | null,
): string[] {
  const argv = [...(image.entrypoint ?? []), ...(args ?? image.cmd ?? [])];
  if (argv.length === 0 || argv[0] === "") {
    throw invalid(
      `nothing to run: image ${JSON.stringify(imageName)} has no Entrypoint or Cmd; give --lang ${LANGUAGE_CHOICES} with -c CODE or a FILE, or -- PROGRAM [ARGS...]`,
    );
  }
  return argv;
}
