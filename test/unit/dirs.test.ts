import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ensureDir } from "../../src/core/dirs.js";

describe("ensureDir", () => {
  const base = mkdtempSync(path.join(tmpdir(), "corral-dirs-"));
  afterAll(() => rmSync(base, { recursive: true, force: true }));

  it("makes missing parents, mode 0711, and is idempotent", async () => {
    const d = path.join(base, "a/b/c");
    await ensureDir(d);
    await ensureDir(d);
    expect(statSync(d).isDirectory()).toBe(true);
    expect(statSync(d).mode & 0o777).toBe(0o711);
  });

  it("refuses at once where mkdir can never succeed (Node's recursive mkdir spins under /proc)", async () => {
    const t = performance.now();
    await expect(ensureDir("/proc/corral-nope/x")).rejects.toThrow(
      /^cannot create \/proc\/corral-nope\/x: \/proc\/corral-nope: it cannot be created there$/,
    );
    expect(performance.now() - t).toBeLessThan(1000);
  });

  it("names a parent that is a file, with the hint given", async () => {
    const err = await ensureDir("/etc/passwd/x", "choose another --out directory").catch((e) => e);
    expect(err.message).toMatch(/not a directory/);
    expect(err.hint).toBe("choose another --out directory");
  });
});
