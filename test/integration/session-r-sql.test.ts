/**
 * R and SQL contexts on real sandboxes: state that persists, printing and results as
 * each language shows them, errors, deadlines that interrupt and keep the state, plots,
 * data frames, result sets with types, CSV import, and contexts isolated from each other.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LIMITS, type Limits } from "../../src/core/limits.js";
import type { Execution, RichResult } from "../../src/sandbox/context.js";
import { Session } from "../../src/sandbox/session.js";
import { type TestEnv, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
const open: Session[] = [];

async function session(limits: Partial<Limits> = {}): Promise<Session> {
  const s = await Session.create(env.host, {
    image: env.image,
    limits: { ...DEFAULT_LIMITS, ...limits },
  });
  open.push(s);
  return s;
}

beforeAll(async () => {
  env = await testEnv("session-r-sql");
});
afterAll(async () => {
  await Promise.all(open.map((s) => s.destroy()));
  env?.close();
});

function pngs(r: Execution): Buffer[] {
  return r.results
    .filter((x) => typeof x.data["image/png"] === "string")
    .map((x) => Buffer.from(x.data["image/png"] as string, "base64"));
}

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

describe("R context", () => {
  let s: Session;
  const R = { language: "R" };
  beforeAll(async () => {
    s = await session();
  });

  it("keeps globals and prints visible values as the console does", async () => {
    const a = await s.runCode("x <- 41; x", R);
    expect(a.error).toBeNull();
    expect(a.stdout.text).toBe("[1] 41\n");
    expect(a.results).toEqual([]);
    const b = await s.runCode("x + 1\ninvisible(7)\ny <- 2\n(y)", R);
    expect(b.stdout.text).toBe("[1] 42\n[1] 2\n");
    expect(b.executionCount).toBe((a.executionCount ?? 0) + 1);
    const fn = await s.runCode("f <- function(v) {\n  # kept\n  v + 1\n}\nf", R);
    expect(fn.stdout.text).toBe("function(v) {\n  # kept\n  v + 1\n}\n");
  });

  it("returns errors with the message, the call and the frames; a parse error runs nothing", async () => {
    const r = await s.runCode("f <- function() stop('boom')\ng <- function() f()\ng()", R);
    expect(r.error?.ename).toBe("simpleError");
    expect(r.error?.evalue).toBe("boom");
    expect(r.error?.traceback).toEqual([
      "Error in f() : boom",
      '3: stop("boom")',
      "2: f()",
      "1: g()",
    ]);
    expect(r.stateLost).toBe(false);
    const top = await s.runCode("log('a')", R);
    expect(top.error?.traceback[0]).toBe(
      'Error in log("a") : non-numeric argument to mathematical function',
    );
    const cls = await s.runCode(
      'stop(structure(class = c("myError", "error", "condition"), list(message = "mine", call = NULL)))',
      R,
    );
    expect(cls.error).toMatchObject({ ename: "myError", evalue: "mine" });
    expect(cls.error?.traceback[0]).toBe("Error: mine");
    // The code is parsed whole: a syntax error on line 2 keeps line 1 from running.
    const syn = await s.runCode("x <- 0\nx y", R);
    expect(syn.error?.ename).toBe("parseError");
    expect(syn.error?.evalue).toMatch(/^<text>:2:3: unexpected symbol/);
    // The first error ends the call.
    const stop = await s.runCode("stop('first')\nx <- 0", R);
    expect(stop.error?.evalue).toBe("first");
    expect((await s.runCode("x", R)).stdout.text).toBe("[1] 41\n");
  });

  it("prints warnings to stderr after the expression, as R shows them", async () => {
    const one = await s.runCode("log(-1)", R);
    expect(one.stdout.text).toBe("[1] NaN\n");
    expect(one.stderr.text).toBe("Warning message:\nIn log(-1) : NaNs produced\n");
    const two = await s.runCode("h <- function() { warning('inner'); sqrt(-1); 3 }\nh()", R);
    expect(two.stdout.text).toBe("[1] 3\n");
    expect(two.stderr.text).toBe(
      "Warning messages:\n1: In h() : inner\n2: In sqrt(-1) : NaNs produced\n",
    );
    const top = await s.runCode("warning('plain')", R);
    expect(top.stderr.text).toBe("Warning message:\nplain \n");
    // warnings() sees them, as in the console.
    const w = await s.runCode("h()\nnames(warnings())", R);
    expect(w.stdout.text).toBe('[1] 3\n[1] "inner"         "NaNs produced"\n');
  });

  it("streams output and keeps UTF-8 exact, in stdout and in results", async () => {
    const chunks: { text: string; at: number }[] = [];
    const t0 = performance.now();
    const r = await s.runCode("cat('thầu ao\\n'); Sys.sleep(1); cat('é€😀\\n')", {
      ...R,
      onStdout: (c) => chunks.push({ text: c.text, at: performance.now() - t0 }),
    });
    expect(r.stdout.text).toBe("thầu ao\né€😀\n");
    expect(r.stdout.base64).toBeUndefined();
    expect(chunks[0]!.text).toBe("thầu ao\n");
    expect(chunks[0]!.at).toBeLessThan(chunks.at(-1)!.at - 700);
    const df = await s.runCode("data.frame(word = c('thầu', 'ao'))", R);
    expect(df.results[0]?.data["text/plain"]).toBe("  word\n1 thầu\n2   ao");
  });

  it("state-survives-timeout: x <- 41, repeat {} times out at 1 s, then x + 1 gives [1] 42 at once", async () => {
    await s.runCode("x <- 41", R);
    const t0 = performance.now();
    const loop = await s.runCode("repeat {}", { ...R, timeoutMs: 1000 });
    const took = performance.now() - t0;
    expect(loop.killed).toBe("timeout");
    expect(loop.stateLost).toBe(false);
    expect(loop.error?.ename).toBe("interrupt");
    expect(took).toBeGreaterThanOrEqual(990);
    expect(took).toBeLessThan(2500);
    const t1 = performance.now();
    const next = await s.runCode("x + 1", R);
    expect(next.stdout.text).toBe("[1] 42\n");
    expect(performance.now() - t1).toBeLessThan(500);
    // A sleep is interrupted too, and the calls after it are not.
    const sleep = await s.runCode("Sys.sleep(30)", { ...R, timeoutMs: 1000 });
    expect(sleep).toMatchObject({ killed: "timeout", stateLost: false });
    expect((await s.runCode("x", R)).stdout.text).toBe("[1] 41\n");
  });

  it("a SIGINT between calls, or closed connections, do not disturb the kernel", async () => {
    const pid = (await s.runCode("cat(Sys.getpid())", R)).stdout.text;
    expect(pid).toMatch(/^\d+$/);
    expect((await s.commands.run(["kill", "-INT", pid])).exitCode).toBe(0);
    const next = await s.runCode("Sys.sleep(0.2); x", R);
    expect(next.error).toBeNull();
    expect(next.stdout.text).toBe("[1] 41\n");
    const closed = await s.runCode("closeAllConnections(); x", R);
    expect(closed.stdout.text).toBe("[1] 41\n");
    expect((await s.runCode("x + 1", R)).stdout.text).toBe("[1] 42\n");
  });

  it("sends each plot page once, as a PNG, at the end of the call", async () => {
    const one = await s.runCode("plot(airquality$Temp)", R);
    expect(one.error).toBeNull();
    expect(one.results).toHaveLength(1);
    expect(one.results[0]).toMatchObject({ kind: "display", isMainResult: false });
    const [png] = pngs(one);
    expect(png!.subarray(0, 8)).toEqual(PNG_MAGIC);
    expect(png!.readUInt32BE(16)).toBe(700); // 7 in at 100 dpi
    const two = await s.runCode("plot(1:3)\nhist(airquality$Wind)", R);
    expect(pngs(two)).toHaveLength(2);
    // Nothing is sent twice, and a device of the user's own is left to the user.
    const none = await s.runCode("png('/work/mine.png'); plot(1:2)", R);
    expect(none.results).toEqual([]);
    const closed = await s.runCode("invisible(dev.off()); file.size('/work/mine.png') > 0", R);
    expect(closed.results).toEqual([]);
    expect(closed.stdout.text).toBe("[1] TRUE\n");
    // A plot before an error is still sent.
    const err = await s.runCode("plot(1)\nstop('after the plot')", R);
    expect(err.error?.evalue).toBe("after the plot");
    expect(pngs(err)).toHaveLength(1);
  });

  it("a data frame as the last value is a result: R's print as text/plain, an escaped HTML table", async () => {
    const r = await s.runCode("head(airquality, 3)", R);
    expect(r.stdout.text).toBe("");
    expect(r.results).toHaveLength(1);
    const res = r.results[0] as RichResult;
    expect(res).toMatchObject({ kind: "result", isMainResult: true });
    expect(res.data["text/plain"]).toBe(
      [
        "  Ozone Solar.R Wind Temp Month Day",
        "1    41     190  7.4   67     5   1",
        "2    36     118  8.0   72     5   2",
        "3    12     149 12.6   74     5   3",
      ].join("\n"),
    );
    const html = res.data["text/html"] as string;
    expect(html).toContain("<th></th><th>Ozone</th><th>Solar.R</th>");
    expect(html).toContain("<tr><th>3</th><td>12</td><td>149</td><td>12.6</td>");
    const esc = await s.runCode("data.frame(a = c('<b>x</b>', 'p&q'), b = c(NA, 1))", R);
    const escHtml = esc.results[0]?.data["text/html"] as string;
    expect(escHtml).toContain("<td>&lt;b&gt;x&lt;/b&gt;</td><td>NA</td>");
    expect(escHtml).toContain("<td>p&amp;q</td>");
    expect(escHtml).not.toContain("<b>");
    // Not the last expression: printed like any other value.
    const mid = await s.runCode("data.frame(z = 1)\nq <- 1", R);
    expect(mid.stdout.text).toBe("  z\n1 1\n");
    expect(mid.results).toEqual([]);
  });

  it("install.packages from a repository fails within seconds with a network error; from a file it works", async () => {
    const t0 = performance.now();
    const r = await s.runCode("install.packages('data.table')", { ...R, timeoutMs: 30_000 });
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(r.killed).toBeNull();
    expect(r.error?.ename).toBe("networkError");
    expect(r.error?.evalue).toMatch(
      /^cannot reach the package repository https:\/\/cloud\.r-project\.org\S* \(.*\): this sandbox has no network access/,
    );
    expect(r.error?.traceback).toContain('1: install.packages("data.table")');
    // A package from a file in the sandbox installs and loads.
    const made = await s.commands.run(
      [
        "mkdir -p /tmp/pkg/corralpkg/R && cd /tmp/pkg/corralpkg",
        "printf 'Package: corralpkg\\nVersion: 1.0\\nTitle: T\\nDescription: D.\\nLicense: MIT\\nAuthor: a\\nMaintainer: a <a@b.c>\\n' > DESCRIPTION",
        "echo 'export(answer)' > NAMESPACE && echo 'answer <- function() 42' > R/a.R",
        "cd /tmp/pkg && tar czf /work/corralpkg_1.0.tar.gz corralpkg",
      ].join(" && "),
    );
    expect(made.exitCode).toBe(0);
    const local = await s.runCode(
      "install.packages('/work/corralpkg_1.0.tar.gz', repos = NULL, type = 'source')\nlibrary(corralpkg)\nanswer()",
      { ...R, timeoutMs: 60_000 },
    );
    expect(local.error).toBeNull();
    expect(local.stdout.text).toMatch(/\[1\] 42\n$/);
  });

  it("per-call envs hold for that call only", async () => {
    const a = await s.runCode("Sys.getenv('CALL_ONLY')", { ...R, envs: { CALL_ONLY: "yes" } });
    expect(a.stdout.text).toBe('[1] "yes"\n');
    const b = await s.runCode("Sys.getenv('CALL_ONLY', unset = '<unset>')", R);
    expect(b.stdout.text).toBe('[1] "<unset>"\n');
  });
});

describe("SQL context", () => {
  let s: Session;
  const SQL = { language: "sql" };
  beforeAll(async () => {
    s = await session();
  });

  it("keeps its connection across calls, on /work/db.sqlite", async () => {
    const a = await s.runCode(
      "create table t(id integer primary key, name text, score real);\ninsert into t(name, score) values ('a', 1.5), ('b', 10), ('c', null);",
      SQL,
    );
    expect(a.error).toBeNull();
    expect(a.results).toEqual([]);
    const b = await s.runCode("create temp table mine(v); insert into mine values (7);", SQL);
    expect(b.error).toBeNull();
    const c = await s.runCode("select v from mine", SQL);
    expect(c.results[0]?.data["application/json"]).toEqual({
      columns: [{ name: "v", type: "integer" }],
      rows: [[7]],
    });
    // Committed: another process sees the rows in the file.
    const cli = await s.commands.run(["sqlite3", "/work/db.sqlite", "select count(*) from t"]);
    expect(cli.stdout.text).toBe("3\n");
  });

  it("returns each result set typed, numbers as numbers; the last statement's is the result", async () => {
    const r = await s.runCode(
      "select id, name, score, score * 2 as twice, 'x' || name as tagged from t order by id;\nselect count(*) as n, 1.0 / 4 as quarter, null as empty, x'00ff' as bytes",
      SQL,
    );
    expect(r.error).toBeNull();
    expect(r.results.map((x) => x.kind)).toEqual(["display", "result"]);
    expect(r.results[0]!.data["application/json"]).toEqual({
      columns: [
        { name: "id", type: "INTEGER" },
        { name: "name", type: "TEXT" },
        { name: "score", type: "REAL" },
        { name: "twice", type: "real" },
        { name: "tagged", type: "text" },
      ],
      rows: [
        [1, "a", 1.5, 3, "xa"],
        [2, "b", 10, 20, "xb"],
        [3, "c", null, null, "xc"],
      ],
    });
    expect(r.results[0]!.data["text/plain"]).toBe(
      [
        "id  name  score  twice  tagged",
        "--  ----  -----  -----  ------",
        " 1  a       1.5    3.0  xa",
        " 2  b      10.0   20.0  xb",
        " 3  c      NULL   NULL  xc",
      ].join("\n"),
    );
    expect(r.results[1]!.data["application/json"]).toEqual({
      columns: [
        { name: "n", type: "integer" },
        { name: "quarter", type: "real" },
        { name: "empty", type: null },
        { name: "bytes", type: "blob" },
      ],
      rows: [[1, 0.25, null, "AP8="]],
    });
    const html = await s.runCode("select '<b>&' as \"a<b\"", SQL);
    expect(html.results[0]?.data["text/html"]).toBe(
      '<table class="dataframe">\n<thead><tr><th>a&lt;b</th></tr></thead>\n<tbody>\n<tr><td>&lt;b&gt;&amp;</td></tr>\n</tbody>\n</table>\n',
    );
  });

  it("returns SQLite's error and stops at the first one; what ran before stays", async () => {
    const r = await s.runCode(
      "insert into t(name) values ('d');\nselect 1 as before;\nselect * from missing;\ninsert into t(name) values ('e');",
      SQL,
    );
    expect(r.error?.ename).toBe("sqlite3.OperationalError");
    expect(r.error?.evalue).toBe("no such table: missing");
    expect(r.error?.traceback).toEqual([
      "sqlite3.OperationalError: no such table: missing (SQLITE_ERROR)",
      "in statement at line 3: select * from missing;",
    ]);
    expect(r.results).toHaveLength(1);
    const count = await s.runCode("select group_concat(name, '') as names from t", SQL);
    expect(count.results[0]?.data["application/json"]).toMatchObject({ rows: [["abcd"]] });
    const dup = await s.runCode("insert into t(id, name) values (1, 'dup')", SQL);
    expect(dup.error).toMatchObject({
      ename: "sqlite3.IntegrityError",
      evalue: "UNIQUE constraint failed: t.id",
    });
    const syntax = await s.runCode("selec 1", SQL);
    expect(syntax.error?.evalue).toBe('near "selec": syntax error');
  });

  it("commits every call: a transaction left open is committed, one that failed is rolled back", async () => {
    await s.runCode("create table ledger(v integer);", SQL);
    const open = await s.runCode("begin; insert into ledger values (1);", SQL);
    expect(open.error).toBeNull();
    const seen = await s.commands.run([
      "sqlite3",
      "/work/db.sqlite",
      "select count(*) from ledger",
    ]);
    expect(seen.stdout.text).toBe("1\n");
    const failed = await s.runCode(
      "begin; insert into ledger values (2); insert into nowhere values (3);",
      SQL,
    );
    expect(failed.error?.evalue).toBe("no such table: nowhere");
    expect(failed.stderr.text).toMatch(/rolled back/);
    const after = await s.runCode("select sum(v) as s from ledger", SQL);
    expect(after.results[0]?.data["application/json"]).toMatchObject({ rows: [[1]] });
  });

  it("keeps UTF-8 exact; a SIGINT between calls is dropped", async () => {
    const r = await s.runCode("select 'thầu ao' as s, length('thầu ao') as n", SQL);
    expect(r.results[0]?.data["application/json"]).toEqual({
      columns: [
        { name: "s", type: "text" },
        { name: "n", type: "integer" },
      ],
      rows: [["thầu ao", 7]],
    });
    expect(r.results[0]?.data["text/plain"]).toBe("s        n\n-------  -\nthầu ao  7");
    const kill = await s.commands.run("pkill -INT -f '[/].corral/kernels/sql.py'");
    expect(kill.exitCode).toBe(0);
    const next = await s.runCode("select count(*) as n from t", SQL);
    expect(next.error).toBeNull();
    expect(next.results[0]?.data["application/json"]).toMatchObject({ rows: [[4]] });
  });

  it("imports a CSV with .import; a window query ranks numerically once the text is cast", async () => {
    const w = await s.commands.run(
      "printf 'name,x\\nalpha,9\\nbeta,10\\ngamma,100\\ndelta,2.5\\n' > /work/values.csv",
    );
    expect(w.exitCode).toBe(0);
    const r = await s.runCode(
      [
        ".import /work/values.csv v",
        "select name, x,",
        "  rank() over (order by x desc) as as_text,",
        "  rank() over (order by cast(x as real) desc) as as_number",
        "from v order by as_number;",
      ].join("\n"),
      SQL,
    );
    expect(r.error).toBeNull();
    expect(r.results[0]?.data["application/json"]).toEqual({
      columns: [
        { name: "name", type: "TEXT" },
        { name: "x", type: "TEXT" },
        { name: "as_text", type: "integer" },
        { name: "as_number", type: "integer" },
      ],
      rows: [
        ["gamma", "100", 3, 1],
        ["beta", "10", 4, 2],
        ["alpha", "9", 1, 3],
        ["delta", "2.5", 2, 4],
      ],
    });
    const tables = await s.runCode(".tables v%\n.schema v", SQL);
    expect(tables.stdout.text).toBe('v\nCREATE TABLE "v" ("name" TEXT, "x" TEXT);\n');
    const bad = await s.runCode(".mode box", SQL);
    expect(bad.error?.evalue).toMatch(/^unknown dot-command "\.mode"/);
    const missing = await s.runCode(".import /work/nope.csv t2", SQL);
    expect(missing.error?.evalue).toBe(
      ".import: cannot open /work/nope.csv: No such file or directory",
    );
  });

  it("a long query is interrupted at the deadline; the connection stays usable", async () => {
    await s.runCode("create temp table kept(v); insert into kept values ('still here');", SQL);
    const t0 = performance.now();
    const r = await s.runCode(
      "with recursive c(i) as (select 1 union all select i + 1 from c) select count(*) from c;",
      { ...SQL, timeoutMs: 1000 },
    );
    const took = performance.now() - t0;
    expect(r.killed).toBe("timeout");
    expect(r.stateLost).toBe(false);
    expect(r.error).toMatchObject({ ename: "sqlite3.OperationalError", evalue: "interrupted" });
    expect(took).toBeLessThan(2500);
    const t1 = performance.now();
    const next = await s.runCode("select v from kept", SQL);
    expect(performance.now() - t1).toBeLessThan(500);
    expect(next.results[0]?.data["application/json"]).toMatchObject({ rows: [["still here"]] });
  });

  it("splits code into statements as SQLite does: strings, comments and triggers hold semicolons", async () => {
    const cases: [string, [string, string, number][]][] = [
      ["select 1", [["sql", "select 1", 1]]],
      ["select ';' ; -- a;b\n", [["sql", "select ';' ;", 1]]],
      [
        "select 1 /* ; */ + 1;\n\nselect 2",
        [
          ["sql", "select 1 /* ; */ + 1;", 1],
          ["sql", "\n\nselect 2", 3],
        ],
      ],
      [
        "create trigger tr after insert on t begin select 1; select 2; end; select 3;",
        [
          ["sql", "create trigger tr after insert on t begin select 1; select 2; end;", 1],
          ["sql", " select 3;", 1],
        ],
      ],
      [
        "-- note\n.tables\nselect\n.5;\n  .schema x\n",
        [
          ["dot", ".tables", 2],
          ["sql", "select\n.5;", 3],
          ["dot", ".schema x", 5],
        ],
      ],
      [";;\n; -- only\n", []],
      [
        "select 1; .tables",
        [
          ["sql", "select 1;", 1],
          ["sql", " .tables", 1],
        ],
      ],
    ];
    const script = [
      "import json, sys",
      "sys.path.insert(0, '/.corral/kernels')",
      "import sql",
      "for code in json.load(sys.stdin): print(json.dumps(sql.split_script(code)))",
    ].join("\n");
    const out = await s.commands.run(["python3", "-c", script], {
      stdin: JSON.stringify(cases.map((c) => c[0])),
    });
    expect(out.stderr.text).toBe("");
    const got = out.stdout.text
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as unknown);
    expect(got).toEqual(cases.map((c) => c[1]));
  });

  it("opens the database a context names", async () => {
    const other = s.createCodeContext({ language: "sqlite", database: "/work/other.sqlite" });
    expect(other).toMatchObject({ language: "sql", database: "/work/other.sqlite" });
    const r = await s.runCode("create table o(v); select count(*) as n from sqlite_schema", {
      context: other.id,
    });
    expect(r.results[0]?.data["application/json"]).toMatchObject({ rows: [[1]] });
    const ls = await s.commands.run("test -s /work/other.sqlite && echo yes");
    expect(ls.stdout.text).toBe("yes\n");
    const mem = s.createCodeContext({ language: "sql", database: ":memory:" });
    const m = await s.runCode("select count(*) from sqlite_schema", { context: mem.id });
    expect(m.results[0]?.data["application/json"]).toMatchObject({ rows: [[0]] });
    expect(() => s.createCodeContext({ language: "sql", database: "rel.sqlite" })).toThrow(
      /database must be an absolute path/,
    );
    await s.removeCodeContext(other.id);
    await s.removeCodeContext(mem.id);
  });
});

describe("R and SQL contexts are isolated from each other", () => {
  it("context-isolation: fresh R globals and SQL temp tables in every new context", async () => {
    const s = await session();
    for (let i = 0; i < 3; i++) {
      const r = s.createCodeContext({ language: "r" });
      const q = s.createCodeContext({ language: "sql" });
      const a = await s.runCode("cat(exists('mark'), '\\n'); mark <- 1", { context: r.id });
      expect(a.stdout.text).toBe("FALSE \n");
      const b = await s.runCode(
        "select count(*) as n from sqlite_temp_master; create temp table mark(v);",
        { context: q.id },
      );
      expect(b.results[0]?.data["application/json"]).toMatchObject({ rows: [[0]] });
      await Promise.all([s.removeCodeContext(r.id), s.removeCodeContext(q.id)]);
    }
    const ps = await s.commands.run("pgrep -c -f '[/].corral/kernels/(r.R|sql.py)' || true");
    expect(ps.stdout.text.trim()).toBe("0");
    await s.destroy();
  });
});
