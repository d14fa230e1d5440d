/**
 * `corral events`: the data directory's event log, as a table or JSON, and `--verify`,
 * which recomputes its hash chain. It only reads: it needs no runtime and starts nothing.
 */
import { existsSync } from "node:fs";
import path from "node:path";
import { EVENT_KINDS, EventLog, type StoredEvent } from "../audit/events.js";
import type { CorralConfig } from "../core/config.js";
import { CorralError, escapeUntrusted } from "../core/errors.js";
import { openDb } from "../store/db.js";
import { formatTable, reportError } from "./output.js";

export interface EventsFlags {
  sandbox?: string;
  kind?: string;
  limit?: string;
  json?: boolean;
  verify?: boolean;
}

/** Exit code of `--verify` when the chain is broken (125 stays for Corral's own errors). */
export const EXIT_CHAIN_BROKEN = 1;

/** The kind families (`file` for every `file.*`), besides the kinds themselves. */
const FAMILIES = [...new Set(EVENT_KINDS.map((k) => k.split(".")[0]!))];

/** The flags as a filter for `EventLog.list`, or why not. */
export function eventFilter(flags: EventsFlags): {
  sandbox?: string;
  kind?: string;
  limit?: number;
} {
  if (flags.verify && (flags.sandbox || flags.kind || flags.limit)) {
    throw new CorralError(
      "invalid_argument",
      "--verify checks the whole log: it cannot be combined with --sandbox, --kind or --limit",
    );
  }
  const filter: { sandbox?: string; kind?: string; limit?: number } = {};
  if (flags.sandbox !== undefined) filter.sandbox = flags.sandbox;
  if (flags.kind !== undefined) {
    const kind = flags.kind;
    if (!(EVENT_KINDS as readonly string[]).includes(kind) && !FAMILIES.includes(kind)) {
      throw new CorralError(
        "invalid_argument",
        `--kind ${escapeUntrusted(kind)}: no such kind of event`,
        `one of ${EVENT_KINDS.join(", ")}, or a family: ${FAMILIES.join(", ")}`,
      );
    }
    filter.kind = kind;
  }
  if (flags.limit !== undefined) {
    if (!/^\s*[1-9]\d*\s*$/.test(flags.limit)) {
      throw new CorralError(
        "invalid_argument",
        `--limit ${escapeUntrusted(flags.limit)}: expected a whole number of events, 1 or more`,
      );
    }
    filter.limit = Number(flags.limit);
  }
  return filter;
}

const DETAILS_WIDTH = 100;

function summariseValue(v: unknown): string {
  if (v === null || typeof v === "number" || typeof v === "boolean") return String(v);
  if (typeof v === "string") {
    // Digests are long and alike in their first 12 hex digits' worth: keep those.
    const digest = /^sha256:([0-9a-f]{64})$/.exec(v);
    const text = digest ? `sha256:${digest[1]!.slice(0, 12)}` : v;
    return escapeUntrusted(text.length > 40 ? `${text.slice(0, 39)}…` : text);
  }
  if (Array.isArray(v)) return `[${v.length}]`;
  return "{…}";
}

/**
 * An event's details on one line: `key=value` for each, scalars first, objects as `{…}` and
 * lists by their length; text from sandboxes (paths, program names) is escaped.
 */
export function summariseDetails(details: Record<string, unknown>, width = DETAILS_WIDTH): string {
  const entries = Object.entries(details);
  const scalar = (v: unknown) => v === null || typeof v !== "object";
  const ordered = [
    ...entries.filter(([, v]) => scalar(v)),
    ...entries.filter(([, v]) => !scalar(v)),
  ];
  const text = ordered.map(([k, v]) => `${escapeUntrusted(k)}=${summariseValue(v)}`).join(" ");
  return text.length > width ? `${text.slice(0, width - 1)}…` : text;
}

/** The table `corral events` prints: a header, then one row per event. */
export function eventTable(events: readonly StoredEvent[]): string[][] {
  return [
    ["SEQ", "TIME (UTC)", "PRINCIPAL", "SANDBOX", "KIND", "OUTCOME", "DETAILS"],
    ...events.map((e) => [
      String(e.seq),
      e.time.replace("T", " ").slice(0, 19),
      escapeUntrusted(e.principal),
      e.sandbox === null ? "-" : escapeUntrusted(e.sandbox),
      e.kind,
      e.outcome,
      summariseDetails(e.details),
    ]),
  ];
}

function openEventLog(dataDir: string): EventLog {
  const file = path.join(dataDir, "corral.db");
  // Never create a log where there is none: a typo in --data-dir must not look like an
  // empty, intact log.
  if (!existsSync(file)) {
    throw new CorralError(
      "not_found",
      `no event log in ${dataDir}: nothing has run with this data directory`,
      "--data-dir DIR or CORRAL_DATA_DIR names another",
    );
  }
  return new EventLog(openDb(file));
}

export async function eventsCommand(config: CorralConfig, flags: EventsFlags): Promise<number> {
  let log: EventLog | null = null;
  try {
    const filter = eventFilter(flags);
    log = openEventLog(config.dataDir);
    if (flags.verify) {
      const check = log.verifyChain();
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(check)}\n`);
      } else if (check.intact) {
        const head = check.head === null ? "" : `, head ${check.head.slice(0, 12)}`;
        process.stdout.write(`event log intact: ${check.events} event(s)${head}\n`);
      } else {
        process.stderr.write(`corral: event log broken at seq ${check.seq}: ${check.reason}\n`);
      }
      return check.intact ? 0 : EXIT_CHAIN_BROKEN;
    }
    const events = log.list(filter);
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(events, null, 2)}\n`);
    } else if (events.length === 0) {
      process.stderr.write("corral: no events match\n");
    } else {
      process.stdout.write(`${formatTable(eventTable(events))}\n`);
    }
    return 0;
  } catch (err) {
    return reportError(err);
  } finally {
    log?.db.close();
  }
}
