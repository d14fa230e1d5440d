/**
 * A pool of pre-made writable layers: sparse ext4 files of the common shapes (size and
 * inode count), formatted in the background under `<data>/pool/`, so that creating a
 * sandbox attaches and mounts one instead of running mkfs.
 *
 * The rules, each for a reason:
 * - An entry is made under a `.making-` name and renamed to its ready name only once
 *   mkfs has finished: a claimer never sees a half-formatted file.
 * - A sandbox claims an entry by renaming it into its own directory. rename(2) is atomic,
 *   so two processes sharing the data directory can never take the same entry: the loser
 *   gets ENOENT and tries the next one.
 * - A claimed entry belongs to its sandbox and is deleted with it: an entry is used once,
 *   never after a sandbox has written to it.
 * - One process at a time fills the pool (a lock the kernel drops when the holder dies);
 *   a `.making-` file seen while holding that lock was left by a dead filler: stale.
 * - Filling never blocks a create: it runs in the background at low priority, and a
 *   create that finds the pool empty formats its own layer as before.
 * - Entry names carry a format version and the shape; entries of another version or of a
 *   shape no longer pooled are stale, and gc removes them. Files not named like entries
 *   are not the pool's and are left alone.
 * - A destroyed sandbox's layer file is handed back (`discard`), never reused: renamed to
 *   a `.spent-` name here at once and deleted in the background, because freeing the
 *   blocks of a layer that was written to takes milliseconds that the destroy need not
 *   wait for. The process that discarded it deletes it; one that exits first deletes it
 *   at close; one that died leaves it to gc.
 */
import { randomBytes } from "node:crypto";
import { readdirSync, renameSync, rmSync } from "node:fs";
import { mkdir, open, readdir, rename, rm } from "node:fs/promises";
import path from "node:path";
import { acquireLock } from "../../core/lock.js";
import { Formatter } from "./formatter.js";
import { ext4FormatArgv } from "./layer.js";

export interface LayerShape {
  diskBytes: number;
  inodes: number;
}

/** Bump when the format arguments change: entries made the old way become stale. */
export const POOL_FORMAT = "v1";

export type PoolFile =
  | { kind: "ready"; name: string; shape: LayerShape }
  | { kind: "making"; name: string }
  | { kind: "spent"; name: string }
  | { kind: "stale"; name: string; why: string }
  | { kind: "foreign"; name: string };

const ENTRY = /^(v\d+)-(\d+)-(\d+)-[0-9a-f]{12}\.img$/;
const MAKING = /^\.making-v\d+-\d+-\d+-[0-9a-f]{12}\.img$/;
const SPENT = /^\.spent-[0-9a-f]{12}\.img$/;

export function poolEntryName(shape: LayerShape, token: string): string {
  return `${POOL_FORMAT}-${shape.diskBytes}-${shape.inodes}-${token}.img`;
}

export function sameShape(a: LayerShape, b: LayerShape): boolean {
  return a.diskBytes === b.diskBytes && a.inodes === b.inodes;
}

/** What a file in the pool directory is, given the shapes this instance pools. */
export function classifyPoolFile(name: string, shapes: readonly LayerShape[]): PoolFile {
  if (MAKING.test(name)) return { kind: "making", name };
  if (SPENT.test(name)) return { kind: "spent", name };
  const m = ENTRY.exec(name);
  if (!m) return { kind: "foreign", name };
  if (m[1] !== POOL_FORMAT) return { kind: "stale", name, why: `format ${m[1]}` };
  const shape = { diskBytes: Number(m[2]), inodes: Number(m[3]) };
  if (!shapes.some((s) => sameShape(s, shape))) {
    return { kind: "stale", name, why: "a shape no longer pooled" };
  }
  return { kind: "ready", name, shape };
}

/**
 * The entries to make now, in order: for each shape, as many as it lacks to reach
 * `perShape`, interleaved so that every shape gets one before any gets a second.
 */
export function planPoolFill(
  files: readonly PoolFile[],
  shapes: readonly LayerShape[],
  perShape: number,
): LayerShape[] {
  const lacking = shapes.map((shape) => ({
    shape,
    n: Math.max(
      0,
      perShape - files.filter((f) => f.kind === "ready" && sameShape(f.shape, shape)).length,
    ),
  }));
  const plan: LayerShape[] = [];
  for (let round = 0; lacking.some((l) => l.n > round); round++) {
    for (const l of lacking) if (l.n > round) plan.push(l.shape);
  }
  return plan;
}

/** The pooled shape that serves a request exactly, if any (a pooled layer is never resized). */
export function pooledShapeFor(want: LayerShape, shapes: readonly LayerShape[]): LayerShape | null {
  return shapes.find((s) => sameShape(s, want)) ?? null;
}

/**
 * Move one ready entry of `shape` from the pool directory to `target` (same file system)
 * and return its name, or null when there is none. rename(2) is atomic: of two processes
 * renaming the same entry, exactly one succeeds, and the other moves on to the next.
 */
export async function claimPoolEntry(
  dir: string,
  shapes: readonly LayerShape[],
  shape: LayerShape,
  target: string,
): Promise<string | null> {
  // Synchronous: a small directory's listing and a rename take microseconds, less than
  // the thread-pool round trips, and a create waits on them.
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return null;
  }
  const candidates = names.filter((n) => {
    const f = classifyPoolFile(n, shapes);
    return f.kind === "ready" && sameShape(f.shape, shape);
  });
  // A random start spreads concurrent claimers over the entries.
  const start = Math.floor(Math.random() * candidates.length);
  for (let i = 0; i < candidates.length; i++) {
    const name = candidates[(start + i) % candidates.length]!;
    try {
      renameSync(path.join(dir, name), target);
      return name;
    } catch {
      // taken by another process meanwhile (ENOENT): try the next
    }
  }
  return null;
}

export interface PoolStats {
  /** Creates served from the pool. */
  claimed: number;
  /** Creates of a pooled shape that found no entry (and ran mkfs themselves). */
  missed: number;
  /** Entries this process made. */
  made: number;
  /** Entries that failed to be made (the pool then stops filling until next asked). */
  failed: number;
}

export interface PoolCollectReport {
  /** Pool files removed (or that would be, on a dry run). */
  removed: string[];
  /** Ready entries kept. */
  ready: number;
}

export class LayerPool {
  readonly stats: PoolStats = { claimed: 0, missed: 0, made: 0, failed: 0 };
  private filling: Promise<void> | null = null;
  private inFlight: { abort: AbortController; file: string; done: Promise<void> } | null = null;
  private stopped = false;
  /** Listeners told when an entry is made (tests and the bench wait on them). */
  private readonly onMade = new Set<() => void>();
  /** Discarded layer files not yet deleted, and the deletions under way (one at a time). */
  private readonly spent = new Set<string>();
  private deleting: Promise<void> = Promise.resolve();
  private readonly formatter = new Formatter();

  constructor(
    readonly dir: string,
    readonly shapes: readonly LayerShape[],
    readonly perShape: number,
    /** The host-global lock that one filler at a time holds (see core/lock.ts). */
    readonly lockName: string,
  ) {}

  get enabled(): boolean {
    return this.perShape > 0 && this.shapes.length > 0;
  }

  async list(): Promise<PoolFile[]> {
    let names: string[] = [];
    try {
      names = await readdir(this.dir);
    } catch {
      return []; // no pool yet
    }
    return names.map((n) => classifyPoolFile(n, this.shapes));
  }

  async ready(shape: LayerShape): Promise<number> {
    return (await this.list()).filter((f) => f.kind === "ready" && sameShape(f.shape, shape))
      .length;
  }

  /**
   * Move a ready entry of `shape` to `target` (a path in the sandbox's own directory, on
   * the same file system). Returns whether one was claimed; never throws. Starts a
   * background refill either way.
   */
  async claim(shape: LayerShape, target: string): Promise<boolean> {
    if (!this.enabled || !pooledShapeFor(shape, this.shapes)) return false;
    const claimed = await claimPoolEntry(this.dir, this.shapes, shape, target);
    if (claimed) this.stats.claimed++;
    else this.stats.missed++;
    this.startFilling();
    return claimed !== null;
  }

  /**
   * Take a destroyed sandbox's layer file (detached, unmounted) off its hands: it is out
   * of the sandbox's directory when this returns, and deleted soon after. Never throws; a
   * file that cannot be moved here is deleted in place.
   */
  discard(file: string): void {
    const spent = path.join(this.dir, `.spent-${randomBytes(6).toString("hex")}.img`);
    try {
      renameSync(file, spent);
    } catch {
      // No pool directory yet, or the file is gone: delete whatever is there.
      rmSync(file, { force: true });
      return;
    }
    this.spent.add(spent);
    this.deleting = this.deleting.then(async () => {
      await rm(spent, { force: true }).catch(() => undefined);
      this.spent.delete(spent);
    });
  }

  /** Refill in the background (at most one fill loop per process); never throws. */
  startFilling(): void {
    if (!this.enabled || this.stopped || this.filling) return;
    this.filling = this.fillLoop()
      .catch(() => {
        this.stats.failed++;
      })
      .finally(() => {
        this.filling = null;
      });
  }

  /** Fill the pool up and wait for it (tests and the bench warm the pool with this). */
  async fill(timeoutMs = 60_000): Promise<void> {
    this.stopped = false;
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      this.startFilling();
      if (!this.filling) return;
      await this.filling;
      const lacking = planPoolFill(await this.list(), this.shapes, this.perShape);
      if (lacking.length === 0 || this.stopped) return;
      // Another process holds the fill lock: wait for it to make progress.
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Resolves when the next entry is made (or after `timeoutMs`). */
  waitForEntry(timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const done = (made: boolean) => {
        clearTimeout(timer);
        this.onMade.delete(listener);
        resolve(made);
      };
      const listener = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.onMade.add(listener);
    });
  }

  /** Resolves once no refill and no deletion is under way (the benchmark waits on it). */
  async idle(): Promise<void> {
    for (;;) {
      const filling = this.filling;
      const deleting = this.deleting;
      await deleting;
      await filling;
      if (this.filling === null && this.deleting === deleting) return;
    }
  }

  /**
   * Stop filling after the entry being made, waiting for it at most `timeoutMs` (then it
   * is aborted): the CLI calls this before exiting, so that the next run finds an entry,
   * without letting a slow disk (mkfs ends with an fsync) hold the command up.
   */
  async settle(timeoutMs = 250): Promise<void> {
    this.stopped = true;
    const idle = (async () => {
      await this.deleting;
      await this.inFlight?.done;
      await this.filling;
    })();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<boolean>((r) => {
      timer = setTimeout(() => r(true), timeoutMs);
    });
    const timedOut = await Promise.race([idle.then(() => false), late]);
    clearTimeout(timer);
    if (timedOut) this.close();
  }

  /**
   * Stop now: abort the entry being made and remove its partial file, and delete the
   * discarded files still waiting, synchronously, so that a process exiting right after
   * close() leaves nothing of its own behind.
   */
  close(): void {
    this.stopped = true;
    this.formatter.close();
    for (const file of this.spent) rmSync(file, { force: true });
    this.spent.clear();
    const flight = this.inFlight;
    if (flight) {
      flight.abort.abort();
      rmSync(flight.file, { force: true });
    }
  }

  private async fillLoop(): Promise<void> {
    const release = await acquireLock(this.lockName);
    if (!release) return; // another process is filling this pool
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      // Holding the lock, any .making- file is a dead filler's leftover.
      for (const f of await this.list()) {
        if (f.kind === "making") await rm(path.join(this.dir, f.name), { force: true });
      }
      while (!this.stopped) {
        const next = planPoolFill(await this.list(), this.shapes, this.perShape)[0];
        if (!next) return;
        await this.makeEntry(next);
      }
    } finally {
      await release();
    }
  }

  private async makeEntry(shape: LayerShape): Promise<void> {
    const token = randomBytes(6).toString("hex");
    const name = poolEntryName(shape, token);
    const partial = path.join(this.dir, `.making-${name}`);
    const abort = new AbortController();
    let finish!: () => void;
    const done = new Promise<void>((r) => {
      finish = r;
    });
    this.inFlight = { abort, file: partial, done };
    try {
      if (this.stopped) throw new Error("stopped");
      const fh = await open(partial, "wx", 0o600);
      await fh.truncate(shape.diskBytes);
      await fh.close();
      // By the resident shell, at low CPU priority: filling must not slow the creates it
      // is meant to speed up (see formatter.ts).
      await this.formatter.run(ext4FormatArgv(partial, shape.inodes), abort.signal);
      if (abort.signal.aborted) throw new Error("aborted");
      await rename(partial, path.join(this.dir, name));
      this.stats.made++;
      for (const listener of [...this.onMade]) listener();
    } catch (err) {
      await rm(partial, { force: true });
      throw err;
    } finally {
      this.inFlight = null;
      finish();
    }
  }

  /**
   * For gc: remove stale entries, discarded files (a live process deleting one as well
   * does no harm), a dead filler's partial files (only when no live process is filling)
   * and, with `drain`, every ready entry too.
   */
  async collect(options: { dryRun: boolean; drain: boolean }): Promise<PoolCollectReport> {
    // The lock first: holding it, no live process is making an entry, so every .making-
    // file is a dead filler's; without it, they may be in progress and are left alone.
    const release = await acquireLock(this.lockName);
    try {
      const files = await this.list();
      const doomed = files.filter(
        (f) =>
          f.kind === "stale" ||
          f.kind === "spent" ||
          (f.kind === "making" && release !== null) ||
          (f.kind === "ready" && options.drain),
      );
      if (!options.dryRun) {
        for (const f of doomed) await rm(path.join(this.dir, f.name), { force: true });
      }
      return {
        removed: doomed.map((f) => path.join(this.dir, f.name)),
        ready: options.drain ? 0 : files.filter((f) => f.kind === "ready").length,
      };
    } finally {
      await release?.();
    }
  }
}
