import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  boundedDetails,
  canonicalJson,
  type EventKind,
  EventLog,
  GENESIS_HASH,
  MAX_EVENT_DETAILS_CHARS,
} from "../../src/audit/events.js";
import { eventFilter, eventTable, summariseDetails } from "../../src/cli/events.js";
import { openDb } from "../../src/store/db.js";

const dirs: string[] = [];
function freshLog(): { log: EventLog; file: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), "corral-events-"));
  dirs.push(dir);
  const file = path.join(dir, "corral.db");
  return { log: new EventLog(openDb(file)), file };
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("events", () => {
  it("canonical JSON sorts keys at every depth", () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { z: 1, y: 2 }], c: null } })).toBe(
      '{"a":{"c":null,"d":[1,{"y":2,"z":1}]},"b":1}',
    );
  });

  it("appends a hash chain that verifies, and detects tampering", () => {
    const { log } = freshLog();
    const a = log.emit({
      principal: "local:0",
      sandbox: "sb-1",
      kind: "sandbox.create",
      details: { x: 1 },
      outcome: "ok",
    });
    const b = log.emit({
      principal: "local:0",
      sandbox: "sb-1",
      kind: "exec",
      details: { exitCode: 0 },
      outcome: "ok",
    });
    expect(a.prevHash).toBe(GENESIS_HASH);
    expect(b.prevHash).toBe(a.hash);
    expect(b.seq).toBe(a.seq + 1);
    expect(log.verify()).toBeNull();
    log.db.prepare("UPDATE events SET details = '{\"exitCode\":1}' WHERE seq = ?").run(b.seq);
    expect(log.verify()).toBe(b.seq);
  });

  it("keeps one unbroken chain when two processes' connections append interleaved", () => {
    const { log, file } = freshLog();
    const other = new EventLog(openDb(file));
    for (let i = 0; i < 50; i++) {
      (i % 2 ? log : other).emit({
        principal: "local:0",
        sandbox: null,
        kind: "exec",
        details: { i },
        outcome: "ok",
      });
    }
    expect(log.list()).toHaveLength(50);
    expect(log.verify()).toBeNull();
    expect(log.list({ limit: 2 }).map((e) => e.seq)).toEqual([49, 50]);
  });

  it("commits deferred events with the next emit, in order, each its own link", () => {
    const { log, file } = freshLog();
    const ev = (kind: EventKind, n: number) => ({
      principal: "local:0",
      sandbox: "sb-1",
      kind,
      details: { n },
      outcome: "ok" as const,
    });
    log.defer(ev("sandbox.self_check", 1));
    // Not written yet: another connection to the file sees nothing.
    const reader = new EventLog(openDb(file));
    expect(reader.list()).toEqual([]);
    const created = log.emit(ev("sandbox.create", 2));
    expect(created.seq).toBe(2);
    expect(reader.list().map((e) => [e.seq, e.kind, e.details.n])).toEqual([
      [1, "sandbox.self_check", 1],
      [2, "sandbox.create", 2],
    ]);
    // flush commits what is deferred; with nothing deferred it writes nothing.
    log.defer(ev("exec", 3));
    log.flush();
    log.flush();
    expect(reader.list().map((e) => e.seq)).toEqual([1, 2, 3]);
    expect(reader.verifyChain()).toEqual({ intact: true, events: 3, head: reader.list()[2]!.hash });
    reader.db.close();
  });

  it("bounds an event's details: too large or not serialisable, summarised, never lost", () => {
    const small = { a: 1, s: "x" };
    expect(boundedDetails(small)).toBe(small);
    const big = {
      exitCode: 3,
      name: "run",
      window: { from: "t0", to: "t1" },
      executions: ["e1", "e2"],
      files: Array.from({ length: 50_000 }, (_, i) => `f${i}`),
    };
    const b = boundedDetails(big);
    // The small values (attribution included) stay; the large one goes.
    expect(b).toEqual({
      exitCode: 3,
      name: "run",
      window: { from: "t0", to: "t1" },
      executions: ["e1", "e2"],
      detailsOmitted: { chars: canonicalJson(big).length, limit: MAX_EVENT_DETAILS_CHARS },
    });
    // A cycle cannot be serialised at all: still an event, with what could be kept.
    const cyclic: Record<string, unknown> = { exitCode: 0 };
    cyclic.self = cyclic;
    expect(boundedDetails(cyclic)).toEqual({
      exitCode: 0,
      detailsOmitted: { chars: null, limit: MAX_EVENT_DETAILS_CHARS },
    });
    // Deferred beside good ones, it does not keep the batch from being committed.
    const { log } = freshLog();
    log.defer({ principal: "p", sandbox: "s", kind: "exec", details: cyclic, outcome: "ok" });
    log.emit({ principal: "p", sandbox: "s", kind: "sandbox.destroy", details: {}, outcome: "ok" });
    expect(log.list().map((e) => e.kind)).toEqual(["exec", "sandbox.destroy"]);
    expect(log.verify()).toBeNull();
  });

  it("lists by sandbox, by kind or family of kinds, and the last N of those", () => {
    const { log } = freshLog();
    const add = (sandbox: string | null, kind: EventKind) =>
      log.emit({ principal: "local:0", sandbox, kind, details: {}, outcome: "ok" });
    add("sb-1", "sandbox.create");
    add("sb-1", "exec");
    add("sb-2", "sandbox.create");
    add("sb-2", "file.read");
    add("sb-2", "file.write");
    add(null, "files.out");
    add("sb-2", "exec");
    const seqs = (f: Parameters<EventLog["list"]>[0]) => log.list(f).map((e) => e.seq);
    expect(seqs({ kind: "exec" })).toEqual([2, 7]);
    // A family is every kind under it, not a mere prefix: "file" is not "files.out".
    expect(seqs({ kind: "file" })).toEqual([4, 5]);
    expect(seqs({ kind: "sandbox" })).toEqual([1, 3]);
    expect(seqs({ sandbox: "sb-2", kind: "file", limit: 1 })).toEqual([5]);
    expect(seqs({ sandbox: "sb-2", limit: 2 })).toEqual([5, 7]);
  });

  it("says where and how the chain breaks", () => {
    const { log } = freshLog();
    for (let i = 0; i < 4; i++) {
      log.emit({
        principal: "local:0",
        sandbox: null,
        kind: "exec",
        details: { i },
        outcome: "ok",
      });
    }
    expect(log.verifyChain()).toEqual({ intact: true, events: 4, head: log.list()[3]!.hash });
    log.db.prepare("UPDATE events SET outcome = 'error' WHERE seq = 3").run();
    expect(log.verifyChain()).toMatchObject({
      intact: false,
      seq: 3,
      reason: "its content does not match its hash: it was changed after it was written",
    });
    log.db.prepare("UPDATE events SET outcome = 'ok' WHERE seq = 3").run();
    log.db.prepare("DELETE FROM events WHERE seq = 2").run();
    expect(log.verifyChain()).toMatchObject({
      intact: false,
      seq: 3,
      reason: "it does not follow event 1: an event before it was removed, added or changed",
    });
    log.db.prepare("UPDATE events SET details = 'not json' WHERE seq = 1").run();
    expect(log.verifyChain()).toMatchObject({ seq: 1, reason: "its details are not valid JSON" });
    // The damaged row is still listed, as it is.
    expect(log.list()[0]!.details).toEqual({ unreadable: "not json" });
    expect(log.verify()).toBe(1);
  });

  it("an empty log is intact", () => {
    expect(freshLog().log.verifyChain()).toEqual({ intact: true, events: 0, head: null });
  });
});

describe("corral events: flags and table", () => {
  it.each([
    [{ verify: true, kind: "exec" }, /--verify checks the whole log/],
    [{ kind: "execs" }, /--kind execs: no such kind of event/],
    [{ limit: "0" }, /--limit 0: expected a whole number of events, 1 or more/],
    [{ limit: "ten" }, /--limit ten/],
  ])("refuses %j", (flags, message) => {
    expect(() => eventFilter(flags)).toThrow(message);
  });

  it("takes kinds, families, sandboxes and limits", () => {
    expect(eventFilter({ kind: "file", sandbox: "sb-1", limit: "5" })).toEqual({
      kind: "file",
      sandbox: "sb-1",
      limit: 5,
    });
    expect(eventFilter({ kind: "sandbox.create" })).toEqual({ kind: "sandbox.create" });
    expect(eventFilter({ verify: true })).toEqual({});
  });

  it("summarises details on one line: scalars first, digests short, sandbox text escaped", () => {
    expect(
      summariseDetails({
        limits: { mem: 1 },
        files: [{ path: "a" }, { path: "b" }],
        image: `sha256:${"ab".repeat(32)}`,
        program: "/bin/\u001b[2Jevil",
        exitCode: 0,
        killed: null,
      }),
    ).toBe(
      "image=sha256:abababababab program=/bin/\\x1b[2Jevil exitCode=0 killed=null limits={…} files=[2]",
    );
    expect(summariseDetails({ text: "x".repeat(200) }, 30)).toBe(`text=${"x".repeat(24)}…`);
  });

  it("makes a table row per event", () => {
    const rows = eventTable([
      {
        seq: 7,
        time: "2026-12-03T06:51:57.123Z",
        principal: "local:0",
        sandbox: null,
        kind: "gc.remove",
        details: { removed: 1 },
        outcome: "ok",
        prevHash: GENESIS_HASH,
        hash: GENESIS_HASH,
      },
    ]);
    expect(rows).toEqual([
      ["SEQ", "TIME (UTC)", "PRINCIPAL", "SANDBOX", "KIND", "OUTCOME", "DETAILS"],
      ["7", "2026-12-03 06:51:57", "local:0", "-", "gc.remove", "ok", "removed=1"],
    ]);
  });
});
