import { describe, expect, it } from "vitest";
import { CorralError } from "../../src/core/errors.js";
import {
  DEFAULT_LIMITS,
  GiB,
  limitsFromFlags,
  MiB,
  parseDuration,
  parseSize,
} from "../../src/core/limits.js";

describe("limits", () => {
  it.each([
    ["512m", 512 * MiB],
    ["1g", GiB],
    ["1.5GiB", 1.5 * GiB],
    ["100000", 100000],
    ["64k", 65536],
  ])("parses size %s", (text, bytes) => {
    expect(parseSize(text, "memory limit")).toBe(bytes);
  });

  it.each(["lots", "", "-1m", "1x", "1 g b"])("rejects size %j with a one-line message", (text) => {
    expect(() => parseSize(text, "memory limit")).toThrowError(
      new CorralError(
        "invalid_argument",
        `invalid memory limit "${text}": expected a size such as 512m, 1g or 100000`,
      ),
    );
  });

  it.each([
    ["30s", 30_000],
    ["500ms", 500],
    ["2m", 120_000],
    ["5", 5000],
    ["1.5s", 1500],
  ])("parses duration %s", (text, ms) => {
    expect(parseDuration(text, "timeout")).toBe(ms);
  });

  it("has the documented defaults", () => {
    expect(DEFAULT_LIMITS).toEqual({
      memoryBytes: 512 * MiB,
      cpus: 1,
      pids: 256,
      diskBytes: GiB,
      inodes: 100_000,
      openFiles: 1024,
      fileSizeBytes: GiB,
      timeoutMs: 30_000,
      outputCapBytes: MiB,
    });
  });

  it("file size follows the disk limit unless given", () => {
    expect(limitsFromFlags({ disk: "100m" }).fileSizeBytes).toBe(100 * MiB);
    expect(limitsFromFlags({ disk: "100m", fileSize: "10m" }).fileSizeBytes).toBe(10 * MiB);
  });

  it.each([
    [{ mem: "1k" }, /memory limit \(--mem\) 1024 is out of range/],
    [{ cpus: "0" }, /cpu limit \(--cpus\) 0 is out of range/],
    [{ cpus: "abc" }, /invalid cpus "abc"/],
    [{ pids: "2" }, /pids limit \(--pids\) 2 is out of range/],
    [{ timeout: "0s" }, /timeout in ms \(--timeout\) 0 is out of range/],
    [{ pids: "1.5" }, /invalid pids limit "1.5"/],
  ])("refuses %j", (flags, message) => {
    expect(() => limitsFromFlags(flags)).toThrow(message);
  });
});
