/** Directories made safely, with one-line errors (data, image and output directories). */
import { mkdir, stat } from "node:fs/promises";
import path from "node:path";
import { CorralError } from "./errors.js";

/**
 * Make a directory and its missing parents, one level at a time. (Node's recursive mkdir
 * spins forever under /proc, where mkdir answers ENOENT for ever; and its errors name
 * no flag.) Any failure is one line saying which directory and why.
 */
export async function ensureDir(
  dir: string,
  hint = "choose another --data-dir / --image-dir",
  /** For the directories made (before the umask): state directories are 0711. */
  mode = 0o711,
): Promise<void> {
  const target = path.resolve(dir);
  const missing: string[] = [];
  let current = target;
  for (;;) {
    try {
      const st = await stat(current);
      if (!st.isDirectory()) {
        throw new CorralError(
          "invalid_argument",
          `cannot use ${target}: ${current} is not a directory`,
          hint,
        );
      }
      break;
    } catch (err) {
      if (err instanceof CorralError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" || current === "/") throw dirError(target, current, err, hint);
      missing.unshift(current);
      current = path.dirname(current);
    }
  }
  for (const d of missing) {
    try {
      await mkdir(d, { mode });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") continue;
      throw dirError(target, d, err, hint);
    }
  }
}

function dirError(target: string, at: string, err: unknown, hint: string): CorralError {
  const code = (err as NodeJS.ErrnoException).code ?? "error";
  const why: Record<string, string> = {
    ENOENT: "it cannot be created there",
    ENOTDIR: "a parent is not a directory",
    EACCES: "permission denied",
    EROFS: "the file system is read-only",
    ENOSPC: "no space left",
    EPERM: "operation not permitted",
  };
  return new CorralError(
    "invalid_argument",
    `cannot create ${target}: ${at}: ${why[code] ?? code}`,
    hint,
  );
}
