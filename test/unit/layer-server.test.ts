import { describe, expect, it } from "vitest";
import { decodeLayerReplies, encodeLayerRequest } from "../../src/sandbox/runtime/layer-server.js";

function reply(code: number, stdout: string, stderr: string): Buffer {
  const out = Buffer.from(stdout);
  const err = Buffer.from(stderr);
  const b = Buffer.alloc(4 + 5 + out.length + err.length);
  b.writeUInt32BE(5 + out.length + err.length, 0);
  b[4] = code;
  b.writeUInt32BE(out.length, 5);
  out.copy(b, 9);
  err.copy(b, 9 + out.length);
  return b;
}

describe("encodeLayerRequest", () => {
  it("a length, then each argument with a NUL after it", () => {
    const b = encodeLayerRequest(["layer-down", "/d/sb-1", "loop-detach-under", "/d/sb-1"]);
    const body = "layer-down\0/d/sb-1\0loop-detach-under\0/d/sb-1\0";
    expect(b.readUInt32BE(0)).toBe(body.length);
    expect(b.subarray(4).toString()).toBe(body);
  });

  it("an empty argument stays one (an ext4 mount without options)", () => {
    expect(encodeLayerRequest(["a", "", "b"]).subarray(4).toString()).toBe("a\0\0b\0");
  });

  it("refuses an argument with a NUL in it (it would split in two)", () => {
    expect(() => encodeLayerRequest(["layer-up", "/d\0/x"])).toThrow(/NUL/);
  });
});

describe("decodeLayerReplies", () => {
  it("splits complete replies and keeps the rest for later", () => {
    const a = reply(0, "loop /dev/loop3\n", "");
    const b = reply(1, "", "corral-supervisor: layer-up: x: No such file\n");
    const both = Buffer.concat([a, b]);
    const partial = both.subarray(0, a.length + 6);
    const first = decodeLayerReplies(partial);
    expect(first.replies).toEqual([{ code: 0, stdout: "loop /dev/loop3\n", stderr: "" }]);
    expect(first.rest.length).toBe(6);
    const second = decodeLayerReplies(Buffer.concat([first.rest, both.subarray(a.length + 6)]));
    expect(second.replies).toEqual([
      { code: 1, stdout: "", stderr: "corral-supervisor: layer-up: x: No such file\n" },
    ]);
    expect(second.rest.length).toBe(0);
  });

  it("nothing until a header is whole", () => {
    expect(decodeLayerReplies(Buffer.from([0, 0])).replies).toEqual([]);
  });

  it("refuses a reply whose lengths do not add up", () => {
    const bad = reply(0, "abc", "");
    bad.writeUInt32BE(99, 5); // stdout longer than the reply
    expect(() => decodeLayerReplies(bad)).toThrow(/malformed/);
    const short = Buffer.from([0, 0, 0, 2, 0, 0]);
    expect(() => decodeLayerReplies(short)).toThrow(/malformed/);
  });
});
