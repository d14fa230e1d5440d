import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The package root: the nearest directory above this file that holds package.json. This
 * file runs both compiled (<root>/dist/src/supervisor/paths.js) and from source under
 * vitest (<root>/src/supervisor/paths.ts), so the depth is not fixed.
 */
export function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, "package.json"))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error("corral: cannot find the package root");
    dir = parent;
  }
  return dir;
}
