/**
 * The host side of each stateful kernel: how it is started inside the sandbox, how a
 * call is encoded for it, and how what it says is read back. The drivers themselves
 * (src/kernels/<language>/driver.*) are mounted read-only at /.corral/kernels.
 */
import { CorralError } from "../core/errors.js";
import { SQL_DATABASE } from "../core/languages.js";
import { ENV_NAME } from "../core/run-options.js";
import { KERNELS_DIR_IN_SANDBOX } from "../sandbox/runtime/oci-spec.js";

export const CONTEXT_LANGUAGES = ["python", "r", "shell", "sql"] as const;
export type ContextLanguage = (typeof CONTEXT_LANGUAGES)[number];

/** Jupyter's MIME bundle: mime type → content (base64 for binary types such as image/png). */
export type MimeBundle = Record<string, unknown>;

/** Jupyter's error shape. */
export interface ExecutionError {
  ename: string;
  evalue: string;
  traceback: string[];
}

export type KernelEvent =
  | { type: "ready" }
  | { type: "result"; data: MimeBundle; metadata: Record<string, unknown> }
  | { type: "display"; data: MimeBundle; metadata: Record<string, unknown> }
  | { type: "error"; error: ExecutionError }
  | { type: "clear_output"; wait: boolean };

export interface KernelEnd {
  /** The shell's exit status of the call; null for kernels that have none. */
  exitCode: number | null;
  /** Python's execution count of the call; null for kernels that have none. */
  executionCount: number | null;
}

/** What a context was created with that changes how its kernel starts. */
export interface KernelOptions {
  /** SQL: the database file the context's connection opens. */
  database?: string;
}

/** A context's kernel options: SQL contexts name their database, no other language has one. */
export function kernelOptions(
  language: ContextLanguage,
  database: string | undefined,
): KernelOptions {
  if (language !== "sql") {
    if (database !== undefined) {
      throw new CorralError("invalid_argument", `database is for SQL contexts, not ${language}`);
    }
    return {};
  }
  const db = database ?? SQL_DATABASE;
  if (typeof db !== "string" || db.includes("\0") || (db !== ":memory:" && !db.startsWith("/"))) {
    throw new CorralError(
      "invalid_argument",
      `database must be an absolute path or ":memory:", not ${JSON.stringify(db)}`,
    );
  }
  return { database: db };
}

export interface KernelDef {
  language: ContextLanguage;
  argv(options: KernelOptions): string[];
  /**
   * Sent at a call's deadline (0: none): SIGINT raises KeyboardInterrupt in Python, an
   * `interrupt` condition in R, and stops the running statement in SQL.
   */
  interruptSignal: number;
  /**
   * A call's request. `silent` (a warm-up by the warm pool) runs the code without
   * counting it, keeping it in history or displaying anything.
   */
  encodeRequest(code: string, env: Readonly<Record<string, string>>, silent?: boolean): Buffer;
  decodeEvent(payload: Buffer): KernelEvent | null;
  decodeEnd(payload: Buffer): KernelEnd;
  /** Code that exercises the kernel's paths once, so that the first real call is fast. */
  warmupCode: string | null;
  /** Code that makes `envs` part of the running kernel's own environment (null: none). */
  setEnvCode(envs: Readonly<Record<string, string>>): string | null;
}

const SIGINT = 2;

/** At most this deep, and this many objects and arrays, in one kernel frame. */
export const MAX_JSON_DEPTH = 64;
export const MAX_JSON_CONTAINERS = 100_000;

/**
 * Whether a frame's JSON is of a shape worth parsing: JSON.parse turns each tiny `{}` of
 * a hostile frame into a heap object some twenty times its size, so the number and depth
 * of containers are checked first, in one pass over the bytes. Real outputs are a few
 * containers around long strings (base64 images, HTML); a table as JSON stays far below.
 */
export function jsonShapeOk(payload: Buffer): boolean {
  let depth = 0;
  let containers = 0;
  let inString = false;
  for (let i = 0; i < payload.length; i++) {
    const c = payload[i];
    if (inString) {
      if (c === 0x5c)
        i++; // a backslash escapes the next byte
      else if (c === 0x22) inString = false;
      continue;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > MAX_JSON_DEPTH || ++containers > MAX_JSON_CONTAINERS) return false;
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  return true;
}

function parseJson(payload: Buffer): Record<string, unknown> | null {
  if (!jsonShapeOk(payload)) return null;
  try {
    const v = JSON.parse(payload.toString("utf8")) as unknown;
    return v !== null && typeof v === "object" ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** A request as the JSON kernels (Python, R, SQL) read it: u32 length, then {code, env}. */
export function encodeJsonRequest(
  code: string,
  env: Readonly<Record<string, string>>,
  silent?: boolean,
): Buffer {
  const body = Buffer.from(JSON.stringify(silent ? { code, env, silent } : { code, env }), "utf8");
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length, 0);
  return Buffer.concat([head, body]);
}

/** An event of a JSON kernel; null for what it does not know (or cannot parse). */
export function decodeJsonEvent(payload: Buffer): KernelEvent | null {
  // Kernel frames come from the user's own process (code can write to fd 4): take only
  // values of the expected types, and nothing that needs walking a nested structure.
  const m = parseJson(payload);
  const text = (v: unknown, fallback: string) => (typeof v === "string" ? v : fallback);
  const object = (v: unknown) =>
    v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
  switch (m?.type) {
    case "ready":
      return { type: "ready" };
    case "result":
    case "display":
      return {
        type: m.type,
        data: object(m.data) as MimeBundle,
        metadata: object(m.metadata),
      };
    case "error":
      return {
        type: "error",
        error: {
          ename: text(m.ename, "Error"),
          evalue: text(m.evalue, ""),
          traceback: Array.isArray(m.traceback)
            ? m.traceback.filter((t): t is string => typeof t === "string")
            : [],
        },
      };
    case "clear_output":
      return { type: "clear_output", wait: m.wait === true };
    default:
      return null;
  }
}

/** END of a JSON kernel: {"executionCount", "status"}. */
export function decodeJsonEnd(payload: Buffer): KernelEnd {
  const count = parseJson(payload)?.executionCount;
  return { exitCode: null, executionCount: typeof count === "number" ? count : null };
}

const python: KernelDef = {
  language: "python",
  argv: () => ["python3", `${KERNELS_DIR_IN_SANDBOX}/python.py`],
  interruptSignal: SIGINT,
  encodeRequest: encodeJsonRequest,
  decodeEvent: decodeJsonEvent,
  decodeEnd: decodeJsonEnd,
  warmupCode: "print(end='')",
  setEnvCode(envs) {
    return `import os as __corral_os\n__corral_os.environ.update(${JSON.stringify(envs)})\ndel __corral_os`;
  },
};

const r: KernelDef = {
  language: "r",
  // R itself rather than Rscript (which only rewrites its arguments into these and execs
  // R): --vanilla reads no site or user profile and restores no workspace, --no-echo
  // keeps the driver's own source out of stdout. The R shell script execs the binary,
  // so the kernel's pid (which receives the interrupt) is R's.
  argv: () => ["R", "--vanilla", "--quiet", "--no-echo", `--file=${KERNELS_DIR_IN_SANDBOX}/r.R`],
  // R notes SIGINT and signals an `interrupt` condition at its next check; the driver
  // catches it around the user's code.
  interruptSignal: SIGINT,
  encodeRequest(code, env) {
    // An R string cannot hold NUL: refuse it here with a clear message.
    if (code.includes("\0")) {
      throw new CorralError("invalid_argument", "R code cannot contain a NUL byte");
    }
    return encodeJsonRequest(code, env);
  },
  decodeEvent: decodeJsonEvent,
  decodeEnd: decodeJsonEnd,
  warmupCode: null,
  setEnvCode(envs) {
    // JSON's string escapes are R's too; backquoted names take any variable name.
    const args = Object.entries(envs).map(([k, v]) => `\`${k}\` = ${JSON.stringify(v)}`);
    return args.length === 0 ? null : `invisible(Sys.setenv(${args.join(", ")}))`;
  },
};

const sql: KernelDef = {
  language: "sql",
  argv: (options) => [
    "python3",
    `${KERNELS_DIR_IN_SANDBOX}/sql.py`,
    options.database ?? SQL_DATABASE,
  ],
  // The driver's SIGINT handler calls sqlite3_interrupt(): the running statement stops
  // with SQLITE_INTERRUPT and the connection stays usable.
  interruptSignal: SIGINT,
  encodeRequest: encodeJsonRequest,
  decodeEvent: decodeJsonEvent,
  decodeEnd: decodeJsonEnd,
  warmupCode: null,
  // The SQL driver runs no user programs: the environment is not its business.
  setEnvCode: () => null,
};

/** A shell word that bash reads back as exactly `s`. */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

const shell: KernelDef = {
  language: "shell",
  argv: () => ["bash", "--norc", "--noprofile", `${KERNELS_DIR_IN_SANDBOX}/shell.sh`],
  warmupCode: null,
  // bash ignores nothing useful on SIGINT in a loop: the sweeps end what the call started.
  interruptSignal: 0,
  encodeRequest(code, env) {
    if (code.includes("\0")) {
      throw new CorralError("invalid_argument", "shell code cannot contain a NUL byte");
    }
    const names = Object.keys(env);
    for (const k of names) {
      if (!ENV_NAME.test(k))
        throw new CorralError("invalid_argument", `invalid environment variable name "${k}"`);
    }
    // Assignments before eval hold for this call only; what the code itself does (cd,
    // export, functions) stays in the shell.
    const text =
      names.length === 0
        ? code
        : `${names.map((k) => `${k}=${shellQuote(env[k] ?? "")}`).join(" ")} eval ${shellQuote(code)}`;
    return Buffer.from(`${text}\0`, "utf8");
  },
  decodeEvent(payload) {
    return parseJson(payload)?.type === "ready" ? { type: "ready" } : null;
  },
  setEnvCode(envs) {
    return Object.entries(envs)
      .map(([k, v]) => {
        if (!ENV_NAME.test(k)) {
          throw new CorralError("invalid_argument", `invalid environment variable name "${k}"`);
        }
        return `export ${k}=${shellQuote(v)}`;
      })
      .join("\n");
  },
  decodeEnd(payload) {
    const text = payload.toString("utf8");
    return { exitCode: /^\d{1,3}$/.test(text) ? Number(text) : null, executionCount: null };
  },
};

export const KERNELS: Record<ContextLanguage, KernelDef> = { python, r, shell, sql };

export function parseContextLanguage(text: string): ContextLanguage {
  const lower = text.toLowerCase();
  const aliases: Record<string, ContextLanguage> = {
    py: "python",
    python3: "python",
    sh: "shell",
    bash: "shell",
    sqlite: "sql",
    sqlite3: "sql",
  };
  const lang = (CONTEXT_LANGUAGES as readonly string[]).includes(lower)
    ? (lower as ContextLanguage)
    : aliases[lower];
  if (!lang) {
    throw new CorralError(
      "invalid_argument",
      `unknown context language "${text}": expected one of ${CONTEXT_LANGUAGES.join(", ")}`,
    );
  }
  return lang;
}
