/** `corral gc`: remove what dead owners left; `--dry-run --json` is the leak check. */
import type { CorralConfig } from "../core/config.js";
import { collectGarbage } from "../sandbox/gc.js";
import { openHost } from "../sandbox/host.js";
import { reportError } from "./output.js";

export async function gcCommand(
  config: CorralConfig,
  flags: { dryRun?: boolean; json?: boolean; pool?: boolean },
): Promise<number> {
  try {
    const host = await openHost(config);
    try {
      const { poolReady, ...report } = await collectGarbage(host, {
        dryRun: flags.dryRun === true,
        drainPool: flags.pool === true,
      });
      const verb = flags.dryRun ? "would remove" : "removed";
      if (flags.json) {
        // Every list is something to remove: the leak check relies on that. Ready pool
        // entries are kept (not garbage), so they are not listed unless --pool drains them.
        process.stdout.write(`${JSON.stringify(report)}\n`);
      } else {
        if (report.sandboxes.length === 0 && report.loopDevices.length === 0) {
          process.stdout.write("no dead sandbox to collect\n");
        } else {
          for (const id of report.sandboxes) process.stdout.write(`${verb} sandbox ${id}\n`);
          process.stdout.write(
            `${verb}: ${report.containers.length} container(s), ${report.mounts.length} mount(s), ` +
              `${report.loopDevices.length} loop device(s), ${report.cgroups.length} cgroup(s), ` +
              `${report.directories.length} director(ies)\n`,
          );
        }
        for (const f of report.poolFiles) process.stdout.write(`${verb} layer pool file ${f}\n`);
        if (poolReady > 0) {
          process.stdout.write(
            `kept ${poolReady} ready layer pool entr${poolReady === 1 ? "y" : "ies"} (corral gc --pool removes them)\n`,
          );
        }
        for (const e of report.errors) process.stderr.write(`corral: gc: ${e}\n`);
      }
      return report.errors.length > 0 ? 1 : 0;
    } finally {
      host.close();
    }
  } catch (err) {
    return reportError(err);
  }
}
