/**
 * The one module that records events. Every sandbox lifecycle step and every execution
 * goes through `emit`; nothing else writes the events table. Each event is chained to
 * the previous one by hash, so a later audit issue can verify and checkpoint the record.
 */
import { createHash } from "node:crypto";
import type { Db } from "../store/db.js";

export type EventKind =
  | "sandbox.create"
  | "sandbox.self_check"
  | "sandbox.destroy"
  | "exec"
  | "session.end"
  | "files.out"
  | "files.changed"
  | "file.read"
  | "file.write"
  | "file.list"
  | "file.stat"
  | "file.mkdir"
  | "file.remove"
  | "file.rename"
  | "gc.remove"
  | "image.build"
  | "image.remove";

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

export class EventLog {
  private readonly head;
  private readonly insert;
  private readonly append;

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
    this.append = db.transaction((input: EventInput): StoredEvent => {
      const last = this.head.get();
      const prevHash = last?.hash ?? GENESIS_HASH;
      const partial = { ...input, seq: (last?.seq ?? 0) + 1, time: new Date().toISOString() };
      const event: StoredEvent = { ...partial, prevHash, hash: eventHash(prevHash, partial) };
      this.insert.run({ ...event, details: canonicalJson(event.details) });
      return event;
    });
  }

  emit(input: EventInput): StoredEvent {
    return this.append.immediate(input);
  }

  list(filter: { sandbox?: string; limit?: number } = {}): StoredEvent[] {
    const rows = this.db
      .prepare(
        `SELECT seq, time, principal, sandbox, kind, details, outcome, prev_hash AS prevHash, hash
         FROM events ${filter.sandbox ? "WHERE sandbox = @sandbox" : ""}
         ORDER BY seq ${filter.limit ? "DESC LIMIT @limit" : ""}`,
      )
      .all({ sandbox: filter.sandbox, limit: filter.limit }) as (Omit<StoredEvent, "details"> & {
      details: string;
    })[];
    const events = rows.map((r) => ({
      ...r,
      details: JSON.parse(r.details) as Record<string, unknown>,
    }));
    return filter.limit ? events.reverse() : events;
  }

  /** Recompute the chain; the first broken link's seq, or null when intact. */
  verify(): number | null {
    let prev = GENESIS_HASH;
    for (const e of this.list()) {
      if (e.prevHash !== prev || eventHash(prev, e) !== e.hash) return e.seq;
      prev = e.hash;
    }
    return null;
  }
}
