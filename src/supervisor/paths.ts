import path from "node:path";
import { fileURLToPath } from "node:url";

/** The package root: this file is compiled to <root>/dist/src/supervisor/paths.js. */
export function packageRoot(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
}

/** The static supervisor binary that `npm run build` compiles (scripts/build-supervisor.mjs). */
export function supervisorBinaryPath(): string {
  return process.env.CORRAL_SUPERVISOR ?? path.join(packageRoot(), "dist/supervisor/corral-supervisor");
}
