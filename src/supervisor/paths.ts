import path from "node:path";
import { packageRoot } from "../core/package-root.js";

/** The static supervisor binary that `npm run build` compiles (scripts/build-supervisor.mjs). */
export function supervisorBinaryPath(): string {
  return (
    process.env.CORRAL_SUPERVISOR ?? path.join(packageRoot(), "dist/supervisor/corral-supervisor")
  );
}
