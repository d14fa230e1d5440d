/**
 * The layer pool's resident shell: it runs plain-word commands one at a time, says which
 * failed, refuses words that mean something to the shell, and ends with what it runs.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { checkWord, Formatter } from "../../src/sandbox/runtime/formatter.js";

const dirs: string[] = [];
const formatters: Formatter[] = [];
function tmp(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), "corral-formatter-"));
  dirs.push(d);
  return d;
}
function formatter(): Formatter {
  const f = new Formatter();
  formatters.push(f);
  return f;
}
afterEach(() => {
  for (const f of formatters.splice(0)) f.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const never = new AbortController().signal;

describe("checkWord", () => {
  it("passes plain words and refuses anything the shell would read", () => {
    for (const w of ["mkfs.ext4", "-N", "100000", "^has_journal", "lazy_itable_init=1,nodiscard"]) {
      expect(checkWord(w), w).toBeNull();
    }
    for (const w of [
      "",
      "a b",
      "$(id)",
      "`id`",
      "a;b",
      "a|b",
      "a&b",
      "*",
      "?",
      "a\nb",
      "'x'",
      '"x"',
    ]) {
      expect(checkWord(w), w).not.toBeNull();
    }
  });
});

describe("Formatter", () => {
  it("runs commands in order in one shell, and says which failed with its status", async () => {
    const f = formatter();
    const d = tmp();
    await f.run(["touch", path.join(d, "a")], never);
    await f.run(["mkdir", path.join(d, "b")], never);
    expect(existsSync(path.join(d, "a")) && existsSync(path.join(d, "b"))).toBe(true);
    await expect(f.run(["sh", "-c", "exit"], never)).resolves.toBeUndefined();
    await expect(f.run(["false"], never)).rejects.toThrow(/^false failed 1$/);
    // Queued requests each get their own answer.
    const results = await Promise.allSettled([
      f.run(["true"], never),
      f.run(["false"], never),
      f.run(["true"], never),
    ]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
  });

  it("refuses a command with a word the shell would read, running nothing", async () => {
    const f = formatter();
    const d = tmp();
    const marker = path.join(d, "ran");
    await expect(f.run(["touch", `${marker};id`], never)).rejects.toThrow(/not a plain word/);
    await expect(f.run([], never)).rejects.toThrow(/no command/);
    expect(existsSync(marker)).toBe(false);
  });

  it("an abort ends the command and its shell; the next request starts a new one", async () => {
    const f = formatter();
    const d = tmp();
    const abort = new AbortController();
    // A duration no other test uses, so that pgrep finds this command only.
    const pattern = "^sleep 31.7$";
    const pids = () => {
      try {
        return execFileSync("pgrep", ["-f", pattern], { encoding: "utf8" }).trim().split("\n");
      } catch {
        return [];
      }
    };
    const slow = f.run(["sleep", "31.7"], abort.signal);
    const deadline = Date.now() + 5000;
    while (pids().length === 0 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    expect(pids()).toHaveLength(1);
    abort.abort();
    await expect(slow).rejects.toThrow(/aborted/);
    const gone = Date.now() + 5000;
    while (pids().length > 0 && Date.now() < gone) await new Promise((r) => setTimeout(r, 20));
    expect(pids()).toEqual([]);
    await f.run(["touch", path.join(d, "after")], never);
    expect(existsSync(path.join(d, "after"))).toBe(true);
  });

  it("a command that outlives its time is killed and reported", async () => {
    const f = formatter();
    await expect(f.run(["sleep", "5"], never, 200)).rejects.toThrow(/sleep took over 0.2 s/);
    await f.run(["true"], never);
  });
});
