/**
 * `corral events` against a real data directory: a one-shot sandbox runs, its events are
 * listed and verified; then the SQLite file is changed behind Corral's back and
 * `--verify` finds where.
 */
import path from "node:path";
import Database from "better-sqlite3";
import { beforeAll, describe, expect, it } from "vitest";
import { corral, expectOneLineError } from "../helpers/cli.js";
import { testDataDir } from "../helpers/sandbox.js";

let dataDir: string;
let sandbox: string;
const events = (args: string[]) => corral(["--data-dir", dataDir, "events", ...args]);

beforeAll(async () => {
  dataDir = testDataDir("events-cli");
  const r = await corral([
    "--data-dir",
    dataDir,
    "run",
    "--json",
    "--lang",
    "shell",
    "-c",
    "echo hi > /work/out.txt",
  ]);
  expect(r.code).toBe(0);
  sandbox = JSON.parse(r.stdout).sandbox;
});

describe("corral events", () => {
  it("lists the run's events: time, principal, sandbox, kind, outcome, details", async () => {
    const r = await events([]);
    expect(r).toMatchObject({ code: 0, stderr: "" });
    const [header, ...rows] = r.stdout.trimEnd().split("\n");
    expect(header).toMatch(/^SEQ +TIME \(UTC\) +PRINCIPAL +SANDBOX +KIND +OUTCOME +DETAILS$/);
    const kinds = rows.map((row) => row.split(/ {2,}/)[4]);
    expect(kinds).toEqual(expect.arrayContaining(["sandbox.create", "exec", "sandbox.destroy"]));
    const exec = rows.find((row) => / exec +ok +/.test(row)) ?? "";
    expect(exec).toMatch(/^\d+ +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +local:\d+ +sb-[0-9a-f]{12} /);
    expect(exec).toContain(sandbox);
    expect(exec).toMatch(/exitCode=0 .*language=shell/);
  });

  it("filters by sandbox and kind, keeps the last N, and prints JSON", async () => {
    const r = await events(["--sandbox", sandbox, "--kind", "exec", "--json"]);
    expect(r.code).toBe(0);
    const list = JSON.parse(r.stdout) as { kind: string; sandbox: string; details: object }[];
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({
      kind: "exec",
      sandbox,
      outcome: "ok",
      details: { exitCode: 0, files: [expect.objectContaining({ path: "out.txt" })] },
    });
    const sandboxKinds = JSON.parse((await events(["--kind", "sandbox", "--json"])).stdout).map(
      (e: { kind: string }) => e.kind,
    );
    expect(sandboxKinds.every((k: string) => k.startsWith("sandbox."))).toBe(true);
    expect(sandboxKinds).toContain("sandbox.create");
    const last = JSON.parse((await events(["--limit", "1", "--json"])).stdout);
    const all = JSON.parse((await events(["--json"])).stdout);
    expect(last).toEqual([all[all.length - 1]]);
    expect(await events(["--sandbox", "sb-000000000000"])).toMatchObject({
      code: 0,
      stdout: "",
      stderr: "corral: no events match\n",
    });
  });

  it("bad flags and a data directory without a log are one line and 125", async () => {
    expectOneLineError(await events(["--kind", "nosuch"]), /--kind nosuch: no such kind/);
    expectOneLineError(await events(["--limit", "-3"]), /--limit -3: expected a whole number/);
    expectOneLineError(await events(["--verify", "--limit", "2"]), /--verify checks the whole log/);
    const empty = testDataDir("events-cli-empty");
    expectOneLineError(
      await corral(["--data-dir", empty, "events"]),
      /no event log in .*events-cli-empty.*: nothing has run with this data directory/,
    );
  });

  it("--verify: 0 while the chain is intact, 1 and the first bad seq once the file is changed", async () => {
    const ok = await events(["--verify"]);
    expect(ok).toMatchObject({ code: 0, stderr: "" });
    const count = (JSON.parse((await events(["--json"])).stdout) as unknown[]).length;
    expect(ok.stdout).toMatch(
      new RegExp(`^event log intact: ${count} event\\(s\\), head [0-9a-f]{12}\\n$`),
    );

    // Change the exec's outcome behind Corral's back, as someone with the file could.
    const db = new Database(path.join(dataDir, "corral.db"));
    let execSeq: number;
    try {
      const row = db.prepare("SELECT seq FROM events WHERE kind = 'exec'").get() as { seq: number };
      execSeq = row.seq;
      db.prepare("UPDATE events SET outcome = 'error' WHERE seq = ?").run(execSeq);
    } finally {
      db.close();
    }
    const bad = await events(["--verify"]);
    expect(bad).toMatchObject({
      code: 1,
      stdout: "",
      stderr: `corral: event log broken at seq ${execSeq}: its content does not match its hash: it was changed after it was written\n`,
    });
    const json = await events(["--verify", "--json"]);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({ intact: false, seq: execSeq });

    // Put it back and remove the event before it instead: the link after the hole breaks.
    const db2 = new Database(path.join(dataDir, "corral.db"));
    try {
      db2.prepare("UPDATE events SET outcome = 'ok' WHERE seq = ?").run(execSeq);
      expect((await events(["--verify"])).code).toBe(0);
      db2.prepare("DELETE FROM events WHERE seq = ?").run(execSeq - 1);
    } finally {
      db2.close();
    }
    const hole = await events(["--verify"]);
    expect(hole.code).toBe(1);
    expect(hole.stderr).toBe(
      `corral: event log broken at seq ${execSeq}: it does not follow event ${execSeq - 2}: an event before it was removed, added or changed\n`,
    );
  });
});
