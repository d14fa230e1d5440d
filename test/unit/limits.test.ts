import { describe, expect, it } from "vitest";
import { CorralError } from "../../src/core/errors.js";
import {
  DEFAULT_LIMITS,
  formatDurationFlag,
  formatSizeFlag,
  GiB,
  limitsFromFlags,
  MiB,
  parseDuration,
  parseIops,
  parseIoRate,
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
      ioReadBps: 0,
      ioWriteBps: 0,
      ioReadIops: 0,
      ioWriteIops: 0,
    });
  });

  it("file size follows the disk limit unless given", () => {
    expect(limitsFromFlags({ disk: "100m" }).fileSizeBytes).toBe(100 * MiB);
    expect(limitsFromFlags({ disk: "100m", fileSize: "10m" }).fileSizeBytes).toBe(10 * MiB);
  });

  it.each([
    [{ mem: "1k" }, "memory limit (--mem) 1k is out of range: 8m to 1t"],
    [{ mem: "2t" }, "memory limit (--mem) 2t is out of range: 8m to 1t"],
    [{ cpus: "0" }, "cpu limit (--cpus) 0 is out of range: 0.01 to 1024"],
    [{ cpus: "abc" }, 'invalid cpus "abc"'],
    [{ pids: "2" }, "pids limit (--pids) 2 is out of range: 8 to 1000000"],
    [{ timeout: "0s" }, "timeout (--timeout) 0ms is out of range: 1ms to 24h"],
    [{ timeout: "25h" }, "timeout (--timeout) 25h is out of range: 1ms to 24h"],
    [{ timeout: "1441m" }, "timeout (--timeout) 1441m is out of range: 1ms to 24h"],
    [{ disk: "15.5m" }, "disk limit (--disk) 15872k is out of range: 16m to 16t"],
    [{ outputCap: "2g" }, "output cap (--output-cap) 2g is out of range: 0 to 1g"],
    [{ fileSize: "0" }, "file size limit (--file-size) 0 is out of range: 1 to 16t"],
    [{ pids: "1.5" }, 'invalid pids limit "1.5"'],
  ])("refuses %j", (flags, message) => {
    expect(() => limitsFromFlags(flags)).toThrow(message);
  });

  it.each([
    [8 * MiB, "8m"],
    [1024 * GiB, "1t"],
    [1.5 * MiB, "1536k"],
    [1000, "1000"],
    [0, "0"],
  ])("formats %d bytes as %s", (bytes, text) => {
    expect(formatSizeFlag(bytes)).toBe(text);
  });

  it.each([
    [24 * 3_600_000, "24h"],
    [90_000, "90s"],
    [120_000, "2m"],
    [1500, "1500ms"],
    [1, "1ms"],
  ])("formats %d ms as %s", (ms, text) => {
    expect(formatDurationFlag(ms)).toBe(text);
  });

  it.each([
    ["10m", 10 * MiB],
    ["10m/s", 10 * MiB],
    ["512k", 512 * 1024],
    ["1.5g", 1.5 * GiB],
    ["unlimited", 0],
    ["max", 0],
  ])("parses I/O rate %s", (text, rate) => {
    expect(parseIoRate(text, "read bandwidth")).toBe(rate);
  });

  it.each([
    ["0", /use "unlimited" for no limit/],
    ["0/s", /use "unlimited" for no limit/],
    ["fast", /invalid read bandwidth "fast": expected a rate such as 10m/],
    ["-1m", /expected a rate such as 10m/],
  ])("refuses I/O rate %j", (text, message) => {
    expect(() => parseIoRate(text, "read bandwidth")).toThrow(message);
  });

  it.each([
    ["100", 100],
    ["unlimited", 0],
    [" 2000 ", 2000],
  ])("parses IOPS %j", (text, n) => {
    expect(parseIops(text, "read IOPS")).toBe(n);
  });

  it.each([
    ["0", /use "unlimited"/],
    ["1.5", /expected a whole number of operations per second/],
    ["1k", /expected a whole number of operations per second/],
  ])("refuses IOPS %j", (text, message) => {
    expect(() => parseIops(text, "read IOPS")).toThrow(message);
  });

  it("takes the I/O flags, and checks their bounds", () => {
    expect(
      limitsFromFlags({ ioReadBps: "4m", ioWriteBps: "1m", ioReadIops: "100", ioWriteIops: "50" }),
    ).toMatchObject({ ioReadBps: 4 * MiB, ioWriteBps: MiB, ioReadIops: 100, ioWriteIops: 50 });
    expect(() => limitsFromFlags({ ioReadBps: "1k" })).toThrow(
      "read bandwidth per second (--io-read-bps) 1k is out of range: 256k to 1t, or unlimited",
    );
    expect(() => limitsFromFlags({ ioWriteIops: "5" })).toThrow(
      "write IOPS (--io-write-iops) 5 is out of range: 10 to 10000000, or unlimited",
    );
  });
});
