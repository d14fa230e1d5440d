/**
 * A sandbox lives no longer than the process that owns it: a library caller killed with
 * SIGKILL (no chance to destroy anything) takes its sandboxes' processes with it, and the
 * next gc of the data directory removes the rest.
 */
import { spawn } from "node:child_process";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { dataTag, loadConfig } from "../../src/core/config.js";
import { collectGarbage } from "../../src/sandbox/gc.js";
import { openHost } from "../../src/sandbox/host.js";
import { processesInSandboxRange } from "../helpers/leaks.js";
import { ROOT, testDataDir } from "../helpers/sandbox.js";

describe("owner death", () => {
  it("SIGKILL of the owning process stops its sandboxes; gc removes what is left", async () => {
    const dataDir = testDataDir("owner-death");
    const script = `
      import { createSandbox } from ${JSON.stringify(path.join(ROOT, "dist/src/index.js"))};
      const s = await createSandbox({ dataDir: ${JSON.stringify(dataDir)} });
      await s.runCode("x = 1");
      await s.commands.run("setsid sleep 1000 & sleep 1000", { background: true, timeoutMs: 0 });
      console.log("ready");
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on("data", (c: Buffer) => {
        if (c.toString().includes("ready")) resolve();
      });
      child.once("exit", (code) => reject(new Error(`the owner exited early (${code})`)));
    });
    const tag = dataTag(dataDir);
    expect(processesInSandboxRange([tag]).length).toBeGreaterThan(2);
    child.kill("SIGKILL");
    // The kernel, the commands and the setsid'd daemon all die with the owner.
    const t0 = performance.now();
    while (processesInSandboxRange([tag]).length > 0 && performance.now() - t0 < 5000) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(processesInSandboxRange([tag])).toEqual([]);
    const host = await openHost(loadConfig({ dataDir }));
    try {
      const report = await collectGarbage(host, { dryRun: false });
      expect(report.sandboxes).toHaveLength(1);
    } finally {
      host.close();
    }
  });
});
