/** Host mount and loop-device bookkeeping, used by teardown and gc. */
import { readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { CorralError } from "../../core/errors.js";
import { runCommand } from "../../core/proc.js";

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

/**
 * Mount points at or below `dir` (by path prefix), in the order to unmount them: deeper
 * paths first, and among equally deep ones the most recently mounted first (an overlay
 * mounted on top of its sibling layer goes before the layer). A path mounted twice is
 * listed twice.
 */
export async function mountsUnder(dir: string): Promise<string[]> {
  return mountsUnderSync(dir);
}

export function mountsUnderSync(dir: string): string[] {
  // A kernel pseudo-file that answers at once: read in place, not through the thread
  // pool (four round trips of it cost more than the read).
  const text = readFileSync("/proc/self/mountinfo", "utf8");
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  const found: { target: string; order: number; depth: number }[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(" ");
    const mp = fields[4];
    if (mp === undefined) continue;
    const target = unescapeMountPath(mp);
    if (target === dir || target.startsWith(prefix)) {
      found.push({ target, order: found.length, depth: target.split("/").length });
    }
  }
  return found.sort((a, b) => b.depth - a.depth || b.order - a.order).map((m) => m.target);
}

/** Unmount everything at or below `dir`, deepest first; lazily if something holds it. */
export async function unmountAllUnder(dir: string): Promise<string[]> {
  const targets = await mountsUnder(dir);
  if (targets.length === 0) return targets;
  // One umount for all of them (in this order) is the common case; if any fails, each
  // one left is retried on its own, lazily if need be.
  const all = await runCommand(["umount", ...targets]);
  if (all.code === 0) return targets;
  for (const target of await mountsUnder(dir)) {
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

/**
 * Loop devices whose backing file lies under `dir` (a deleted backing file included),
 * read from sysfs (`/sys/block/loopN/loop/backing_file` exists while a device is bound),
 * which costs no process; losetup answers where sysfs cannot be read.
 */
export async function loopDevicesUnder(dir: string): Promise<LoopDevice[]> {
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  const under = (d: LoopDevice) => d.backFile.replace(/ \(deleted\)$/, "").startsWith(prefix);
  let names: string[];
  try {
    names = (await readdir("/sys/block")).filter((n) => /^loop\d+$/.test(n));
  } catch {
    return (await loopDevicesFromLosetup()).filter(under);
  }
  const devices = await Promise.all(
    names.map(async (n) => {
      const backFile = await readFile(`/sys/block/${n}/loop/backing_file`, "utf8").catch(
        () => null,
      );
      return backFile === null ? null : { name: `/dev/${n}`, backFile: backFile.trimEnd() };
    }),
  );
  return devices.filter((d): d is LoopDevice => d !== null && under(d));
}

async function loopDevicesFromLosetup(): Promise<LoopDevice[]> {
  const r = await runCommand(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"]);
  if (r.code !== 0 || r.stdout.trim() === "") return [];
  const parsed = JSON.parse(r.stdout) as {
    loopdevices?: { name: string; "back-file": string | null }[];
  };
  return (parsed.loopdevices ?? []).map((d) => ({ name: d.name, backFile: d["back-file"] ?? "" }));
}

export async function detachLoop(name: string): Promise<void> {
  await runCommand(["losetup", "--detach", name]);
}
