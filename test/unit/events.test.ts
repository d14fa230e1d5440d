import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { canonicalJson, EventLog, GENESIS_HASH } from "../../src/audit/events.js";
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
});
