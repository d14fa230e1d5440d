/**
 * The supervisor binary's `layer-serve` mode, one per host: the layer plans without a
 * process of ours per plan. Each plan is sent on its stdin; it forks a child of its own
 * (a small static process: a fraction of the cost of forking this large one and exec'ing
 * a new binary, which is most of a one-shot layer-up's time) that runs the plan exactly
 * as `layer-up` or `layer-down` would, and sends back the exit status and output. One
 * plan at a time, in order. The framing is pure (encode/decode below); the I/O is the
 * class.
 */
import { type ChildProcess, spawn } from "node:child_process";

/** Request: u32 length (big-endian), then the arguments, each ending with a NUL. */
export function encodeLayerRequest(args: readonly string[]): Buffer {
  for (const a of args) {
    if (a.includes("\0")) throw new Error("a layer plan argument holds a NUL");
  }
  const body = Buffer.from(args.map((a) => `${a}\0`).join(""), "utf8");
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
}

export interface LayerReply {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Reply: u32 length, u8 exit status, u32 length of stdout, stdout, then stderr. Returns
 * the complete replies at the start of `buf` and what is left of it.
 */
export function decodeLayerReplies(buf: Buffer): { replies: LayerReply[]; rest: Buffer } {
  const replies: LayerReply[] = [];
  let at = 0;
  while (buf.length - at >= 4) {
    const len = buf.readUInt32BE(at);
    if (buf.length - at - 4 < len) break;
    const body = buf.subarray(at + 4, at + 4 + len);
    if (len < 5) throw new Error("a malformed reply from layer-serve");
    const outLen = body.readUInt32BE(1);
    if (5 + outLen > len) throw new Error("a malformed reply from layer-serve");
    replies.push({
      code: body[0]!,
      stdout: body.subarray(5, 5 + outLen).toString("utf8"),
      stderr: body.subarray(5 + outLen).toString("utf8"),
    });
    at += 4 + len;
  }
  return { replies, rest: buf.subarray(at) };
}

/** Raised when the server is gone; the caller runs the plan some other way. */
export class LayerServerGone extends Error {}

export class LayerServer {
  private child: ChildProcess | null = null;
  private pending: { resolve: (r: LayerReply) => void; reject: (e: Error) => void }[] = [];
  private buffered: Buffer = Buffer.alloc(0);
  private gone: string | null = null;
  private stderr = "";

  constructor(
    readonly binary: string,
    /** Every plan's directory lies under it (the data directory's sandboxes). */
    readonly root: string,
  ) {}

  /** Whether it can still take plans (it has not failed or been closed). */
  get usable(): boolean {
    return this.gone === null;
  }

  private start(): ChildProcess {
    if (this.child) return this.child;
    const child = spawn(this.binary, ["layer-serve", this.root], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    child.stdout!.on("data", (chunk: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, chunk]);
      let decoded: ReturnType<typeof decodeLayerReplies>;
      try {
        decoded = decodeLayerReplies(this.buffered);
      } catch (err) {
        this.fail((err as Error).message);
        return;
      }
      this.buffered = decoded.rest;
      for (const reply of decoded.replies) this.pending.shift()?.resolve(reply);
      this.idle();
    });
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (c: string) => {
      if (this.stderr.length < 4096) this.stderr += c;
    });
    child.stdin!.on("error", () => undefined); // its exit says what happened
    child.once("error", (err) => this.fail(err.message));
    child.once("exit", (code, signal) =>
      this.fail(this.stderr.trim() || `layer-serve exited (${code ?? signal})`),
    );
    this.child = child;
    this.idle();
    return child;
  }

  /** Idle, it must not keep the process alive; with a plan under way, it must. */
  private idle(): void {
    const child = this.child;
    if (!child) return;
    const streams = [child.stdin, child.stdout, child.stderr] as unknown as {
      ref(): void;
      unref(): void;
    }[];
    if (this.pending.length === 0) {
      child.unref();
      for (const s of streams) s.unref();
    } else {
      child.ref();
      for (const s of streams) s.ref();
    }
  }

  private fail(why: string): void {
    if (this.gone === null) this.gone = why;
    for (const p of this.pending.splice(0)) p.reject(new LayerServerGone(why));
    this.child?.kill("SIGKILL");
  }

  /**
   * Run one plan (the arguments after the binary, as for the one-shot modes). A plan not
   * answered within `timeoutMs` (a mount stuck in the kernel) ends the server: the
   * plans after it do not wait behind it.
   */
  run(args: readonly string[], timeoutMs = 60_000): Promise<LayerReply> {
    if (this.gone !== null) return Promise.reject(new LayerServerGone(this.gone));
    const frame = encodeLayerRequest(args);
    const child = this.start();
    return new Promise<LayerReply>((resolve, reject) => {
      const timer = setTimeout(
        () => this.fail(`layer-serve did not answer within ${timeoutMs / 1000} s`),
        timeoutMs,
      );
      this.pending.push({
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.idle();
      child.stdin!.write(frame);
    });
  }

  /** Close its stdin: it exits once the plan under way (if any) is answered. */
  close(): void {
    if (this.gone === null) this.gone = "closed";
    this.child?.stdin?.end();
  }
}
