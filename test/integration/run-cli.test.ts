/**
 * The Docker-style `corral run`: `-- ARGV` with no shell, --env, --workdir, -i, --in and
 * --db, through the real CLI. The argv tests use an image imported from a tar that holds
 * one static binary and nothing else: no shell, no libc, no Python.
 */
import { execFileSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { beforeAll, describe, expect, it } from "vitest";
import { corral, expectOneLineError, type Ran } from "../helpers/cli.js";
import { testDataDir } from "../helpers/sandbox.js";
import { dockerSaveArchive } from "../helpers/tar-writer.js";
import { buildTinybox } from "../helpers/tinybox.js";

let dataDir: string;
let imageDir: string;
let digest: string;
let files: string;

/** With the test's own image cache (the imported image). */
const tiny = (args: string[], input?: string) =>
  corral(
    ["--data-dir", dataDir, "--image-dir", imageDir, "run", "--image", "tiny", ...args],
    input === undefined ? {} : { input },
  );
/** With the machine's shared cache (the default image). */
const run = (args: string[], input?: string) =>
  corral(["--data-dir", dataDir, "run", ...args], input === undefined ? {} : { input });

beforeAll(async () => {
  dataDir = testDataDir("run-cli");
  imageDir = path.join(dataDir, "images");
  const bin = path.join(dataDir, "bin");
  mkdirSync(bin);
  buildTinybox(bin);
  const tar = path.join(dataDir, "tiny.tar");
  execFileSync("tar", ["-cf", tar, "-C", bin, "tinybox"]);
  const r = await corral(["--image-dir", imageDir, "image", "import", tar, "--name", "tiny"]);
  expect(r.stderr).toBe("");
  digest = /digest {2}(sha256:[0-9a-f]{64})/.exec(r.stdout)?.[1] ?? "";
  files = path.join(dataDir, "files");
  mkdirSync(path.join(files, "dir/sub"), { recursive: true });
  writeFileSync(path.join(files, "note.txt"), "from the host\n");
  writeFileSync(path.join(files, "keep.txt"), "unchanged\n");
  writeFileSync(path.join(files, "dir/a.txt"), "a\n");
  writeFileSync(path.join(files, "dir/sub/b.sh"), "#!/bin/sh\n", { mode: 0o755 });
  symlinkSync("/etc/passwd", path.join(files, "dir/link"));
});

describe("corral run -- ARGV in an image with only a static binary", () => {
  it("runs the argv directly, options after -- included, by name and by digest", async () => {
    expect(await tiny(["--", "/tinybox", "a", "b c", "--help", "-x"])).toMatchObject({
      code: 0,
      stdout: "argv: a b c --help -x\n",
      stderr: "",
    });
    const byDigest = await corral([
      "--data-dir",
      dataDir,
      "--image-dir",
      imageDir,
      "run",
      "--image",
      digest.slice(0, 19),
      "--",
      "/tinybox",
      "pwd",
    ]);
    expect(byDigest).toMatchObject({ code: 0, stdout: "/work\n" });
  });

  it("passes the program's exit code through; not found is 127, not executable 126, as docker", async () => {
    expect((await tiny(["--", "/tinybox", "exit", "7"])).code).toBe(7);
    const oneLine = (r: Ran, code: number, message: string) => {
      expect(r).toMatchObject({ code, stdout: "", stderr: `corral: ${message}\n` });
    };
    oneLine(
      await tiny(["--", "/bin/sh", "-c", "true"]),
      127,
      "program /bin/sh not found in the image",
    );
    oneLine(
      await tiny(["--", "nosuchprog"]),
      127,
      "program nosuchprog not found in the image (looked up in its PATH)",
    );
    // A directory is there but cannot be executed.
    oneLine(
      await tiny(["--", "/work"]),
      126,
      "program /work is not executable in the image (permission denied)",
    );
    // Each attempt is in the record, with why it never ran.
    const log = await corral([
      "--data-dir",
      dataDir,
      "events",
      "--kind",
      "exec",
      "--json",
      "--limit",
      "3",
    ]);
    const execs = JSON.parse(log.stdout) as { outcome: string; details: Record<string, unknown> }[];
    expect(
      execs.map((e) => [e.outcome, e.details.started, (e.details.error as { code: string }).code]),
    ).toEqual([
      ["error", false, "program_not_found"],
      ["error", false, "program_not_found"],
      ["error", false, "program_not_executable"],
    ]);
  });

  it("--env adds variables to the image's environment", async () => {
    const r = await tiny([
      "-e",
      "GREETING=hello world",
      "--env",
      "EMPTY=",
      "--env",
      "EQ=a=b",
      "--",
      "/tinybox",
      "env",
    ]);
    expect(r.code).toBe(0);
    const env = r.stdout.split("\n");
    expect(env).toEqual(
      expect.arrayContaining([
        "GREETING=hello world",
        "EMPTY=",
        "EQ=a=b",
        "HOME=/root",
        "LANG=C.UTF-8",
      ]),
    );
    expect(env.find((l) => l.startsWith("PATH="))).toMatch(/\/usr\/bin/);
  });

  it("--workdir: relative to /work or absolute, made when missing", async () => {
    expect((await tiny(["-w", "sub/dir", "--", "/tinybox", "pwd"])).stdout).toBe("/work/sub/dir\n");
    expect((await tiny(["--workdir", "/opt/x", "--", "/tinybox", "pwd"])).stdout).toBe("/opt/x\n");
  });

  it("-i forwards stdin; without it the program reads nothing", async () => {
    const input = "line 1\nline 2\n".repeat(1000);
    expect(await tiny(["-i", "--", "/tinybox", "stdin"], input)).toMatchObject({
      code: 0,
      stdout: input,
    });
    expect(await tiny(["--", "/tinybox", "stdin"], "not forwarded\n")).toMatchObject({
      code: 0,
      stdout: "",
    });
  });

  it("--in copies a file to /work/<name> and a directory to DEST, owned by root inside", async () => {
    const note = path.join(files, "note.txt");
    const dir = path.join(files, "dir");
    expect((await tiny(["--in", note, "--", "/tinybox", "cat", "/work/note.txt"])).stdout).toBe(
      "from the host\n",
    );
    expect((await tiny(["--in", `${dir}:/data`, "--", "/tinybox", "ls", "/data"])).stdout).toBe(
      "a.txt\nlink\nsub\n",
    );
    expect(
      (await tiny(["--in", `${dir}:/data`, "--", "/tinybox", "stat", "/data/sub/b.sh"])).stdout,
    ).toBe("0 0 755\n");
    expect(
      (await tiny(["--in", `${note}:in/n.txt`, "--", "/tinybox", "stat", "/work/in/n.txt"])).stdout,
    ).toBe("0 0 644\n");
    // A symlink inside a copied directory stays a link (to the sandbox's /etc/passwd).
    expect(
      (await tiny(["--in", `${dir}:/data`, "--", "/tinybox", "stat", "/data/link"])).stdout,
    ).toBe("0 0 777\n");
  });

  it("code can change what --in brought; only changed files come out, the host's copy stays", async () => {
    const out = path.join(dataDir, "out");
    const r = await tiny([
      "--json",
      "--out",
      out,
      "--in",
      path.join(files, "note.txt"),
      "--in",
      path.join(files, "keep.txt"),
      "--",
      "/tinybox",
      "write",
      "/work/note.txt",
      "changed in the sandbox",
    ]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({
      language: null,
      argv: ["/tinybox", "write", "/work/note.txt", "changed in the sandbox"],
    });
    expect(j.files.map((f: { path: string }) => f.path)).toEqual(["note.txt"]);
    expect(readFileSync(path.join(out, "note.txt"), "utf8")).toBe("changed in the sandbox");
    expect(readFileSync(path.join(files, "note.txt"), "utf8")).toBe("from the host\n");
    // What came in and stayed as it was is not copied out either.
    expect(readdirSync(out)).toEqual(["note.txt"]);
  });

  it("a directory brought in and left alone: nothing reported, nothing copied out", async () => {
    const out = path.join(dataDir, "out-untouched");
    const r = await tiny([
      "--json",
      "--out",
      out,
      "--in",
      path.join(files, "dir"),
      "--",
      "/tinybox",
      "argv",
    ]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).files).toEqual([]);
    expect(existsSync(out) ? readdirSync(out) : []).toEqual([]);
  });
});

describe("an imported image's Entrypoint, Cmd and WorkingDir, as docker run uses them", () => {
  const img = (name: string, args: string[]) =>
    corral(["--data-dir", dataDir, "--image-dir", imageDir, "run", "--image", name, ...args]);

  beforeAll(async () => {
    const tinybox = readFileSync(path.join(dataDir, "bin", "tinybox"));
    const layer = [{ name: "tinybox", data: tinybox, mode: 0o755 }];
    const images: [string, Record<string, unknown>][] = [
      ["ep", { Entrypoint: ["/tinybox"], Cmd: ["pwd"], WorkingDir: "/srv/app" }],
      ["cmd-only", { Cmd: ["/tinybox", "from", "cmd"] }],
    ];
    for (const [name, config] of images) {
      const file = path.join(dataDir, `${name}.tar`);
      writeFileSync(file, dockerSaveArchive([layer], { repoTag: `${name}:v1`, config }));
      const r = await corral(["--image-dir", imageDir, "image", "import", file, "--name", name]);
      expect(r.stderr).toBe("");
    }
  });

  it("no program: Entrypoint + Cmd in WorkingDir (made when missing)", async () => {
    expect(await img("ep", [])).toMatchObject({ code: 0, stdout: "/srv/app\n", stderr: "" });
    const j = JSON.parse((await img("ep", ["--json"])).stdout);
    expect(j.argv).toEqual(["/tinybox", "pwd"]);
    expect(await img("cmd-only", [])).toMatchObject({ code: 0, stdout: "argv: from cmd\n" });
  });

  it("-- ARGS replaces Cmd and keeps Entrypoint; --workdir wins over WorkingDir", async () => {
    expect((await img("ep", ["--", "exit", "3"])).code).toBe(3);
    expect((await img("ep", ["--", "hello", "x"])).stdout).toBe("argv: hello x\n");
    expect((await img("ep", ["-w", "/tmp"])).stdout).toBe("/tmp\n");
    // No Entrypoint: the arguments are the whole argv, in /work as before.
    expect((await img("cmd-only", ["--", "/tinybox", "pwd"])).stdout).toBe("/work\n");
  });

  it("an imported image shifted for another uid base says to import it again", async () => {
    const r = await corral(
      ["--data-dir", dataDir, "--image-dir", imageDir, "run", "--image", "ep"],
      { env: { CORRAL_UID_BASE: "200000000" } },
    );
    expectOneLineError(
      r,
      /image "ep" was shifted to uid base 100000000, but this configuration uses 200000000 \(import ep\.tar again with `corral image import`\)/,
    );
  });

  it("an image with neither says what to give", async () => {
    expectOneLineError(
      await tiny([]),
      /nothing to run: image "tiny" has no Entrypoint or Cmd; give --lang python\|r\|shell\|sql with -c CODE or a FILE, or -- PROGRAM \[ARGS\.\.\.\]/,
    );
  });
});

describe("corral run --db and --in with the default image", () => {
  it("--db brings a SQLite file in as /work/db.sqlite for --lang sql", async () => {
    const dbFile = path.join(dataDir, "numbers.db");
    const db = new Database(dbFile);
    db.exec("create table t(x); insert into t values (1),(2),(39);");
    db.close();
    const before = readFileSync(dbFile);
    const r = await run([
      "--lang",
      "sql",
      "--db",
      dbFile,
      "-c",
      "insert into t values (100); select sum(x) from t;",
    ]);
    expect(r).toMatchObject({ code: 0, stdout: "142\n", stderr: "" });
    expect(readFileSync(dbFile)).toEqual(before);
  });

  it("with --lang, what follows -- is the code's own arguments, in each language", async () => {
    const py = await run([
      "--lang",
      "python",
      "-c",
      "import sys; print(sys.argv[1:])",
      "--",
      "a",
      "b c",
    ]);
    expect(py).toMatchObject({ code: 0, stdout: "['a', 'b c']\n" });
    const script = path.join(dataDir, "args.sh");
    writeFileSync(script, 'echo "$#:$1:$2"\n');
    const sh = await run(["--lang", "shell", script, "--", "-x", ""]);
    expect(sh).toMatchObject({ code: 0, stdout: "2:-x:\n" });
    const r = await run([
      "--lang",
      "r",
      "-c",
      "cat(commandArgs(trailingOnly = TRUE), sep = '|')",
      "--",
      "1",
      "two",
    ]);
    expect(r).toMatchObject({ code: 0, stdout: "1|two" });
    expectOneLineError(
      await run(["--lang", "sql", "-c", "select 1;", "--", "x"]),
      /SQL takes no arguments/,
    );
    expectOneLineError(
      await run(["--lang", "python", script, "extra"]),
      /the code's own arguments go after --/,
    );
  });

  it("--in with code in a language: python reads the copied file", async () => {
    const r = await run([
      "--lang",
      "python",
      "--in",
      `${path.join(files, "note.txt")}:/srv/in.txt`,
      "-c",
      "print(open('/srv/in.txt').read().strip().upper())",
    ]);
    expect(r).toMatchObject({ code: 0, stdout: "FROM THE HOST\n" });
  });

  it("refuses a destination through a symbolic link of the image (/bin is one)", async () => {
    const r = await run([
      "--lang",
      "shell",
      "--in",
      `${path.join(files, "note.txt")}:/bin/x`,
      "-c",
      "true",
    ]);
    expectOneLineError(r, /--in .*note\.txt: \/bin is a symbolic link in the image/);
  });
});

describe("bad input to corral run is one line and exit 125", () => {
  it.each([
    [
      ["--env", "FOO", "--", "/tinybox"],
      /--env FOO has no value: give FOO=VALUE \(Corral never reads it from the host\)/,
    ],
    [["--mem", "1k", "--", "/tinybox"], /memory limit \(--mem\) 1k is out of range: 8m to 1t$/m],
    [["--timeout", "0", "--", "/tinybox"], /timeout \(--timeout\) 0ms is out of range: 1ms to 24h/],
    [["-e", "1X=y", "--", "/tinybox"], /--env "1X=y": expected NAME=VALUE/],
    [
      ["--in", "/nonexistent/file", "--", "/tinybox"],
      /--in: cannot read \/nonexistent\/file: ENOENT/,
    ],
    [
      ["--in", "x:../etc/passwd", "--", "/tinybox"],
      /--in x:..\/etc\/passwd: "\.\." is not allowed/,
    ],
    [["--in", "x:/proc/x", "--", "/tinybox"], /\/proc is mounted over/],
    [
      ["--workdir", "/work/../etc", "--", "/tinybox"],
      /--workdir \/work\/..\/etc: "\.\." is not allowed/,
    ],
    [["--lang", "shell", "--", "/tinybox"], /no code: give a FILE or -c CODE/],
    [["-c", "echo", "--", "/tinybox"], /-c needs --lang .*what follows -- is then its arguments/],
    [["--"], /nothing after --/],
    [["-c", "print(1)"], /-c needs --lang python\|r\|shell\|sql/],
    [["x.py"], /"x.py" needs --lang python\|r\|shell\|sql to run as code/],
    [
      ["--lang", "sql", "--db", "/nonexistent.db", "-c", "select 1;"],
      /--db: cannot read \/nonexistent\.db: ENOENT/,
    ],
    [["--lang", "shell", "-i", "-"], /-i forwards standard input/],
    [["--lang", "shell", "a.sh", "b.sh"], /too many arguments/],
  ])("%j", async (args, message) => {
    expectOneLineError(await tiny(args), message);
  });
});
