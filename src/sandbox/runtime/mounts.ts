/** Host mount and loop-device bookkeeping, used by teardown and gc. */
import { readFile } from "node:fs/promises";
import { CorralError } from "../../core/errors.js";
import { runCommand } from "../../core/proc.js";

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

/** Mount points at or below `dir` (by path prefix), deepest first. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile("/proc/self/mountinfo", "utf8");
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  const found = new Set<string>();
  for (const line of text.split("\n")) {
    const fields = line.split(" ");
    const mp = fields[4];
    if (mp === undefined) continue;
    const target = unescapeMountPath(mp);
    if (target === dir || target.startsWith(prefix)) found.add(target);
  }
  return [...found].sort((a, b) => b.length - a.length);
}

/** Unmount everything at or below `dir`, deepest first; lazily if something holds it. */
export async function unmountAllUnder(dir: string): Promise<string[]> {
  const targets = await mountsUnder(dir);
  for (const target of targets) {
    let r = await runCommand(["umount", target]);
    if (r.code !== 0) r = await runCommand(["umount", "-l", target]);
    if (r.code !== 0 && !/not mounted|no mount point/i.test(r.stderr)) {
      throw new CorralError("runtime_failed", `unmounting ${target} failed: ${r.stderr.trim()}`);
    }
  }
  return targets;
}

export interface LoopDevice {
  name: string;
  backFile: string;
}

/** Loop devices whose backing file lies under `dir`. */
export async function loopDevicesUnder(dir: string): Promise<LoopDevice[]> {
  const r = await runCommand(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"]);
  if (r.code !== 0 || r.stdout.trim() === "") return [];
  const parsed = JSON.parse(r.stdout) as {
    loopdevices?: { name: string; "back-file": string | null }[];
  };
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  return (parsed.loopdevices ?? [])
    .filter((d) => d["back-file"]?.replace(/ \(deleted\)$/, "").startsWith(prefix))
    .map((d) => ({ name: d.name, backFile: d["back-file"] ?? "" }));
}

export async function detachLoop(name: string): Promise<void> {
  await runCommand(["losetup", "--detach", name]);
}
