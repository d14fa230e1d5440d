/** `corral gc`: remove what dead owners left; `--dry-run --json` is the leak check. */
import type { CorralConfig } from "../core/config.js";
import { collectGarbage } from "../sandbox/gc.js";
import { openHost } from "../sandbox/host.js";
import { reportError } from "./output.js";

export async function gcCommand(
  config: CorralConfig,
  flags: { dryRun?: boolean; json?: boolean },
): Promise<number> {
  try {
    const host = await openHost(config);
    try {
      const report = await collectGarbage(host, { dryRun: flags.dryRun === true });
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(report)}\n`);
      } else if (report.sandboxes.length === 0) {
        process.stdout.write("nothing to collect\n");
      } else {
        const verb = flags.dryRun ? "would remove" : "removed";
        for (const id of report.sandboxes) process.stdout.write(`${verb} sandbox ${id}\n`);
        process.stdout.write(
          `${verb}: ${report.containers.length} container(s), ${report.mounts.length} mount(s), ` +
            `${report.loopDevices.length} loop device(s), ${report.cgroups.length} cgroup(s), ` +
            `${report.directories.length} director(ies)\n`,
        );
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
