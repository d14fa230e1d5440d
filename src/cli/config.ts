import type { CorralConfig } from "../core/config.js";

export function configCommand(config: CorralConfig): number {
  process.stdout.write(`${JSON.stringify(config, null, 2)}\n`);
  return 0;
}
