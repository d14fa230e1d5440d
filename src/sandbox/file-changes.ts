/**
 * File changes of a session, collected per window rather than per call, so that the hot
 * path never pays for a walk (2,000 entries cost 13 ms or more of CPU here). The layer is
 * walked 1 s after the last execution ended, at the latest 5 s after the first execution
 * of a window began (even if executions are still running), on demand, and once more when
 * the session ends. Each window names the executions that ran in it: the changes are
 * attributed to the window, not to one call, unless the window holds only that call.
 */
import {
  classifyCopyUps,
  diffSnapshots,
  type FileChange,
  type LayerSnapshot,
  snapshotLayer,
} from "./layer-walk.js";

export interface ChangeWindow {
  seq: number;
  from: Date;
  to: Date;
  /** Executions (calls and commands) that ran, wholly or in part, in this window. */
  executions: string[];
  changes: FileChange[];
  /** The layer held more entries than a walk takes: the list may be incomplete. */
  truncated: boolean;
}

/** A window keeps at most this many changes (the rest is counted as truncated). */
export const MAX_CHANGES_PER_WINDOW = 10_000;

export interface FileChangeOptions {
  idleMs?: number;
  maxMs?: number;
  /** How many past windows are kept for `windowOf`. */
  keep?: number;
}

export class FileChangeTracker {
  private previous: LayerSnapshot = new Map();
  private from = new Date();
  private seq = 0;
  private readonly active = new Set<string>();
  private readonly pending: string[] = [];
  private readonly windows: ChangeWindow[] = [];
  private idleTimer: NodeJS.Timeout | null = null;
  private maxTimer: NodeJS.Timeout | null = null;
  private walking: Promise<ChangeWindow | null> = Promise.resolve(null);
  private closed = false;
  private readonly idleMs: number;
  private readonly maxMs: number;
  private readonly keep: number;

  constructor(
    private readonly upperDir: string,
    /** The image's root: tells a copy-up from a creation. */
    private readonly rootfs: string,
    private readonly onWindow: (w: ChangeWindow) => void,
    opts: FileChangeOptions = {},
  ) {
    this.idleMs = opts.idleMs ?? 1000;
    this.maxMs = opts.maxMs ?? 5000;
    this.keep = opts.keep ?? 32;
  }

  /** The starting point: what the layer holds before the first execution. */
  async init(): Promise<void> {
    this.previous = (await snapshotLayer(this.upperDir)).snapshot;
    this.from = new Date();
  }

  begin(id: string): void {
    if (this.closed) return;
    this.active.add(id);
    this.pending.push(id);
    this.clearIdle();
    if (!this.maxTimer) {
      this.maxTimer = setTimeout(() => void this.walkNow(), this.maxMs);
      this.maxTimer.unref();
    }
  }

  finish(id: string): void {
    this.active.delete(id);
    if (this.closed || this.active.size > 0) return;
    this.clearIdle();
    this.idleTimer = setTimeout(() => void this.walkNow(), this.idleMs);
    this.idleTimer.unref();
  }

  private clearIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }

  /** Walk now (after any walk in progress) and close the window, if anything ran in it. */
  walkNow(): Promise<ChangeWindow | null> {
    const next = this.walking.then(() => this.walkOnce());
    this.walking = next.catch(() => null);
    return next;
  }

  private async walkOnce(): Promise<ChangeWindow | null> {
    this.clearIdle();
    if (this.maxTimer) clearTimeout(this.maxTimer);
    this.maxTimer = null;
    if (this.pending.length === 0) return null;
    const executions = [...new Set(this.pending)];
    this.pending.length = 0;
    // Executions still running go on into the next window too.
    this.pending.push(...this.active);
    const { snapshot, truncated } = await snapshotLayer(this.upperDir);
    const window: ChangeWindow = {
      seq: ++this.seq,
      from: this.from,
      to: new Date(),
      executions,
      changes: [],
      truncated,
    };
    const all = await classifyCopyUps(
      this.rootfs,
      diffSnapshots(this.previous, snapshot).slice(0, MAX_CHANGES_PER_WINDOW * 2),
    );
    window.changes = all.slice(0, MAX_CHANGES_PER_WINDOW);
    window.truncated ||= all.length > MAX_CHANGES_PER_WINDOW;
    this.previous = snapshot;
    this.from = window.to;
    this.windows.push(window);
    if (this.windows.length > this.keep) this.windows.shift();
    if (this.pending.length > 0 && !this.closed) {
      this.maxTimer = setTimeout(() => void this.walkNow(), this.maxMs);
      this.maxTimer.unref();
    }
    this.onWindow(window);
    return window;
  }

  /** The window of one execution; walks first if that execution is in the open window. */
  async windowOf(id: string): Promise<ChangeWindow | null> {
    if (this.pending.includes(id)) await this.walkNow();
    // The last window holding it: a long execution spans several, the last is complete.
    for (let i = this.windows.length - 1; i >= 0; i--) {
      if (this.windows[i]!.executions.includes(id)) return this.windows[i]!;
    }
    return null;
  }

  /** The final walk, once no sandbox process runs any more. */
  async close(): Promise<ChangeWindow | null> {
    this.clearIdle();
    const last = await this.walkNow();
    this.closed = true;
    if (this.maxTimer) clearTimeout(this.maxTimer);
    this.maxTimer = null;
    return last;
  }
}
