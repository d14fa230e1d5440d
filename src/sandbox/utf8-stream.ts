/**
 * Decoding a byte stream as UTF-8, chunk by chunk, without damaging a character that a
 * chunk boundary cut in two, and without losing bytes that are not UTF-8 at all.
 */
import { incompleteUtf8Tail } from "./run-code.js";

export interface DecodedChunk {
  text: string;
  /** Present when the chunk held bytes that are not UTF-8: its exact bytes. */
  base64?: string;
}

const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export class Utf8Stream {
  private carry: Buffer = Buffer.alloc(0);

  /** Decode what is complete; an incomplete character at the end waits for the next chunk. */
  push(chunk: Buffer): DecodedChunk {
    const bytes = this.carry.length === 0 ? chunk : Buffer.concat([this.carry, chunk]);
    const keep = incompleteUtf8Tail(bytes);
    this.carry = keep === 0 ? Buffer.alloc(0) : Buffer.from(bytes.subarray(bytes.length - keep));
    return decode(keep === 0 ? bytes : bytes.subarray(0, bytes.length - keep));
  }

  /** The end of the stream: whatever is still held back is decoded as it is. */
  end(): DecodedChunk {
    const rest = this.carry;
    this.carry = Buffer.alloc(0);
    return decode(rest);
  }
}

function decode(bytes: Buffer): DecodedChunk {
  try {
    return { text: strict.decode(bytes) };
  } catch {
    return { text: bytes.toString("utf8"), base64: bytes.toString("base64") };
  }
}
