/**
 * The one module that records events. Every sandbox lifecycle step and every execution
 * goes through `emit`; nothing else writes the events table. Each event is chained to
 * the previous one by hash, so a later audit issue can verify and checkpoint the record.
 */
import { createHash } from "node:crypto";
import type { Db } from "../store/db.js";

/** Every kind of event, as data: `corral events --kind` checks what it is given against it. */
export const EVENT_KINDS = [
  "sandbox.create",
  "sandbox.self_check",
  "sandbox.destroy",
  "exec",
  "session.end",
  "files.out",
  "files.changed",
  "file.read",
  "file.write",
  "file.list",
  "file.stat",
  "file.mkdir",
  "file.remove",
  "file.rename",
  "gc.remove",
  "image.build",
  "image.remove",
] as const;

export type EventKind = (typeof EVENT_KINDS)[number];

export type Outcome = "ok" | "error" | "denied" | "timeout" | "oom" | "killed";

export interface EventInput {
  principal: string;
  sandbox: string | null;
  kind: EventKind;
  details: Record<string, unknown>;
  outcome: Outcome;
}

export interface StoredEvent extends EventInput {
  seq: number;
  time: string;
  prevHash: string;
  hash: string;
}

export const GENESIS_HASH = "0".repeat(64);

/** Canonical JSON: object keys sorted at every depth, so the hash does not depend on order. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
}

export function eventHash(prevHash: string, e: Omit<StoredEvent, "hash" | "prevHash">): string {
  const body = canonicalJson({
    seq: e.seq,
    time: e.time,
    principal: e.principal,
    sandbox: e.sandbox,
    kind: e.kind,
    details: e.details,
    outcome: e.outcome,
  });
  return createHash("sha256").update(prevHash).update("\n").update(body).digest("hex");
}

/** The most an event's details may take as canonical JSON; past it they are summarised. */
export const MAX_EVENT_DETAILS_CHARS = 256 * 1024;
/** In a summarised event, each value kept is at most this large. */
const MAX_KEPT_VALUE_CHARS = 8 * 1024;

/**
 * An event's details as they will be stored: as given when their canonical JSON fits in
 * MAX_EVENT_DETAILS_CHARS; otherwise (or when they cannot be serialised at all: a string
 * past V8's limit) their small top-level values, with a note of what was left out. So no event can be too large to record, and none (deferred with
 * others) can keep the rest of its batch from being committed.
 */
export function boundedDetails(details: Record<string, unknown>): Record<string, unknown> {
  let chars: number | null;
  try {
    chars = canonicalJson(details).length;
  } catch {
    chars = null;
  }
  if (chars !== null && chars <= MAX_EVENT_DETAILS_CHARS) return details;
  // What is small stays (a window's times, the executions it belongs to): only the
  // values too large or unserialisable go, so the event keeps its attribution.
  const kept: Record<string, unknown> = {};
  let total = 0;
  for (const [k, v] of Object.entries(details)) {
    let size: number;
    try {
      size = canonicalJson(v).length;
    } catch {
      continue;
    }
    if (size > MAX_KEPT_VALUE_CHARS || total + size > MAX_EVENT_DETAILS_CHARS / 2) continue;
    kept[k] = v;
    total += size;
  }
  return { ...kept, detailsOmitted: { chars, limit: MAX_EVENT_DETAILS_CHARS } };
}

export class EventLog {
  private readonly head;
  private readonly insert;
  private readonly append;
  /** Events recorded by `defer`, committed with the next emit or flush. */
  private pending: { input: EventInput; time: string }[] = [];

  constructor(readonly db: Db) {
    this.head = db.prepare<[], { seq: number; hash: string }>(
      "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1",
    );
    this.insert = db.prepare(
      `INSERT INTO events (seq, time, principal, sandbox, kind, details, outcome, prev_hash, hash)
       VALUES (@seq, @time, @principal, @sandbox, @kind, @details, @outcome, @prevHash, @hash)`,
    );
    // BEGIN IMMEDIATE: read the chain head and append under one write lock, so two
    // processes appending at once can never fork the chain.
    this.append = db.transaction(
      (batch: readonly { input: EventInput; time: string }[]): StoredEvent[] => {
        const last = this.head.get();
        let prevHash = last?.hash ?? GENESIS_HASH;
        let seq = last?.seq ?? 0;
        const stored: StoredEvent[] = [];
        for (const { input, time } of batch) {
          const partial = { ...input, seq: ++seq, time };
          const event: StoredEvent = { ...partial, prevHash, hash: eventHash(prevHash, partial) };
          this.insert.run({ ...event, details: canonicalJson(event.details) });
          stored.push(event);
          prevHash = event.hash;
        }
        return stored;
      },
    );
  }

  /** Append an event (and any deferred before it), durably: one transaction, one fsync. */
  emit(input: EventInput): StoredEvent {
    input = { ...input, details: boundedDetails(input.details) };
    const batch = [...this.pending, { input, time: new Date().toISOString() }];
    const stored = this.append.immediate(batch);
    this.pending = []; // only once committed: a failed commit keeps them for the next
    return stored.at(-1)!;
  }

  /**
   * Record an event now, to be committed with the next emit (or flush) in the same
   * transaction: an event that is always followed within milliseconds by another (a
   * self-check by its create, a one-shot run by its sandbox's destroy) then costs no
   * fsync of its own. The caller must emit or flush before it answers anyone, so that
   * no one ever sees an outcome whose record is not yet durable.
   */
  defer(input: EventInput): void {
    input = { ...input, details: boundedDetails(input.details) };
    this.pending.push({ input, time: new Date().toISOString() });
  }

  /** Commit the deferred events, if any. */
  flush(): void {
    if (this.pending.length === 0) return;
    this.append.immediate(this.pending);
    this.pending = [];
  }

  /**
   * The events in order, optionally of one sandbox and of one kind (`exec`) or family of
   * kinds (`file` is every `file.*`); with `limit`, the last that many of those.
   */
  list(filter: { sandbox?: string; kind?: string; limit?: number } = {}): StoredEvent[] {
    const where = [
      ...(filter.sandbox ? ["sandbox = @sandbox"] : []),
      ...(filter.kind
        ? ["(kind = @kind OR substr(kind, 1, length(@kind) + 1) = @kind || '.')"]
        : []),
    ];
    const rows = this.db
      .prepare(
        `SELECT seq, time, principal, sandbox, kind, details, outcome, prev_hash AS prevHash, hash
         FROM events ${where.length > 0 ? `WHERE ${where.join(" AND ")}` : ""}
         ORDER BY seq ${filter.limit ? "DESC LIMIT @limit" : ""}`,
      )
      .all({ sandbox: filter.sandbox, kind: filter.kind, limit: filter.limit }) as RawEvent[];
    const events = rows.map((r) => ({ ...r, details: parseDetails(r.details) }));
    return filter.limit ? events.reverse() : events;
  }

  /** Recompute the chain; the first broken link's seq, or null when intact. */
  verify(): number | null {
    const r = this.verifyChain();
    return r.intact ? null : r.seq;
  }

  /**
   * Recompute the chain from the first event, row by row as stored (a row whose details are
   * not even JSON is a broken link too), and say where and how it first breaks. This finds
   * an event changed, removed or moved after it was written; it cannot find the last events
   * removed, or a chain rewritten from scratch (that needs checkpoints kept elsewhere).
   */
  verifyChain(): ChainCheck {
    let prev = GENESIS_HASH;
    let prevSeq: number | null = null;
    let events = 0;
    const rows = this.db
      .prepare(
        `SELECT seq, time, principal, sandbox, kind, details, outcome, prev_hash AS prevHash, hash
         FROM events ORDER BY seq`,
      )
      .iterate() as IterableIterator<RawEvent>;
    for (const row of rows) {
      events++;
      const after = prevSeq === null ? "the start of the log" : `event ${prevSeq}`;
      let details: Record<string, unknown>;
      try {
        details = JSON.parse(row.details) as Record<string, unknown>;
      } catch {
        return { intact: false, seq: row.seq, events, reason: "its details are not valid JSON" };
      }
      if (row.prevHash !== prev) {
        return {
          intact: false,
          seq: row.seq,
          events,
          reason: `it does not follow ${after}: an event before it was removed, added or changed`,
        };
      }
      if (eventHash(prev, { ...row, details }) !== row.hash) {
        return {
          intact: false,
          seq: row.seq,
          events,
          reason: "its content does not match its hash: it was changed after it was written",
        };
      }
      prev = row.hash;
      prevSeq = row.seq;
    }
    return { intact: true, events, head: events > 0 ? prev : null };
  }
}

type RawEvent = Omit<StoredEvent, "details"> & { details: string };

/** A row's details; a damaged row (not JSON) is still listed, its text kept as it is. */
function parseDetails(text: string): Record<string, unknown> {
  try {
    const v = JSON.parse(text) as unknown;
    if (v !== null && typeof v === "object" && !Array.isArray(v))
      return v as Record<string, unknown>;
  } catch {
    // below
  }
  return { unreadable: text };
}

/** What `verifyChain` found. */
export type ChainCheck =
  | { intact: true; events: number; head: string | null }
  | { intact: false; seq: number; events: number; reason: string };
