/**
 * A resident shell that runs the layer pool's mkfs commands, one at a time, at low CPU
 * priority. Spawning a process from Node forks Node itself, which stalls its event loop
 * for milliseconds (about 2 ms at 70 MB of memory here, 9 ms at 150 MB): a refill
 * started by a create would stall that very create. Spawned once, this shell forks the
 * commands instead, at no cost to the process that serves the creates.
 *
 * Each request is one line of words, split by the shell with globbing off. Words are
 * checked first (checkWord): only characters with no meaning to the shell pass, so a
 * line is never more than the argv it was built from.
 */
import { type ChildProcess, spawn } from "node:child_process";
import type { Readable, Writable } from "node:stream";

/** Runs each line's words as a command, with no stdio, and answers "ok" or "failed N". */
const SCRIPT =
  'set -f; while IFS= read -r line; do if $line </dev/null >/dev/null 2>&1; then echo ok; else echo "failed $?"; fi; done';

const WORD = /^[A-Za-z0-9_.,=^/:+-]+$/;

/** Why `word` cannot be sent to the shell as one word, or null. */
export function checkWord(word: string): string | null {
  return WORD.test(word) ? null : `not a plain word: ${JSON.stringify(word)}`;
}

export class Formatter {
  private child: ChildProcess | null = null;
  private buffered = "";
  private waiting: { resolve: (line: string) => void; reject: (e: Error) => void } | null = null;
  private queue: Promise<unknown> = Promise.resolve();

  /** Run `argv` in the resident shell; rejects if it fails, times out or is aborted. */
  run(argv: readonly string[], signal: AbortSignal, timeoutMs = 60_000): Promise<void> {
    const bad = argv.map(checkWord).find((p) => p !== null);
    if (argv.length === 0 || bad) return Promise.reject(new Error(bad ?? "no command"));
    const next = this.queue.then(() => this.runNow(argv, signal, timeoutMs));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async runNow(argv: readonly string[], signal: AbortSignal, timeoutMs: number) {
    if (signal.aborted) throw new Error("aborted");
    const child = this.start();
    const answer = new Promise<string>((resolve, reject) => {
      this.waiting = { resolve, reject };
    });
    // Aborting or running out of time ends the shell (and the command, its group): the
    // next request starts a new one.
    const stop = (why: string) => this.kill(new Error(why));
    const onAbort = () => stop("aborted");
    signal.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(() => stop(`${argv[0]} took over ${timeoutMs / 1000} s`), timeoutMs);
    this.ref(true);
    try {
      (child.stdin as Writable).write(`${argv.join(" ")}\n`);
      const line = await answer;
      if (line !== "ok") throw new Error(`${argv[0]} ${line}`);
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      this.waiting = null;
      this.ref(false);
    }
  }

  private start(): ChildProcess {
    if (this.child) return this.child;
    // Its own process group, so that a kill reaches the command it is running too.
    const child = spawn("nice", ["-n", "10", "sh", "-c", SCRIPT], {
      stdio: ["pipe", "pipe", "ignore"],
      detached: true,
    });
    this.child = child;
    (child.stdout as Readable).setEncoding("utf8").on("data", (c: string) => {
      if (this.child !== child) return; // a killed shell's last words answer nobody
      this.buffered += c;
      for (let nl = this.buffered.indexOf("\n"); nl >= 0; nl = this.buffered.indexOf("\n")) {
        const line = this.buffered.slice(0, nl);
        this.buffered = this.buffered.slice(nl + 1);
        this.waiting?.resolve(line);
      }
    });
    const gone = (why: string) => {
      // A shell we killed already answered its request (kill): the one waiting now, if
      // any, is the next shell's.
      if (this.child !== child) return;
      this.child = null;
      this.buffered = "";
      this.waiting?.reject(new Error(why));
    };
    child.once("error", (e) => gone(`cannot start the formatter: ${e.message}`));
    child.once("exit", (code, sig) => gone(`the formatter exited (${code ?? sig})`));
    (child.stdin as Writable).on("error", () => undefined); // it died: "exit" says so
    this.ref(false);
    return child;
  }

  /** While a command runs the shell keeps the process alive; idle, it must not. */
  private ref(busy: boolean): void {
    const child = this.child;
    if (!child) return;
    const handles = [child, child.stdin, child.stdout] as unknown as {
      ref(): void;
      unref(): void;
    }[];
    for (const h of handles) {
      if (busy) h.ref();
      else h.unref();
    }
  }

  private kill(err: Error): void {
    const child = this.child;
    this.child = null;
    this.buffered = "";
    if (child?.pid !== undefined) {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    this.waiting?.reject(err);
  }

  /** End the shell (and anything it runs) now. */
  close(): void {
    this.kill(new Error("closed"));
  }
}
