/**
 * The supervisor's layer-up and layer-down modes, run as root on the host: they mount a
 * sandbox's root as planned (a loop-backed ext4 or a tmpfs, the upper and work
 * directories, the overlay) and take it down leaving no mount and no loop device; they
 * refuse a plan outside the closed list before running any step, follow no symbolic
 * link, undo a layer-up that fails half-way, and several at once each get their own loop
 * device. A sandbox's create and destroy go through them, and a host whose helper cannot
 * run falls back to mount(8).
 */
import { execFile } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import { runCommand } from "../../src/core/proc.js";
import { ext4FormatArgv, LayerMounter } from "../../src/sandbox/runtime/layer.js";
import {
  type LayerMountPlan,
  layerOpsArgv,
  planLayerDown,
  planLayerUp,
} from "../../src/sandbox/runtime/layer-plan.js";
import { LayerServer } from "../../src/sandbox/runtime/layer-server.js";
import { loopDevicesUnder, mountsUnder } from "../../src/sandbox/runtime/mounts.js";
import { Sandbox } from "../../src/sandbox/sandbox.js";
import { supervisorBinaryPath } from "../../src/supervisor/paths.js";
import { type TestEnv, testEnv } from "../helpers/sandbox.js";

const BIN = supervisorBinaryPath();
const ROOT_UID = 100_000_000;

let env: TestEnv;
let base: string;
let lower: string;
let n = 0;
beforeAll(async () => {
  env = await testEnv("layer-ops");
  base = path.join(env.config.dataDir, "layer-ops");
  mkdirSync(base, { mode: 0o711 });
  lower = path.join(base, "lower");
  mkdirSync(lower, { mode: 0o755 });
  writeFileSync(path.join(lower, "from-image"), "image\n");
});
afterAll(() => env?.close());

interface Fake {
  dir: string;
  layer: string;
  layerImage: string;
  rootfs: string;
}

/** A sandbox-like directory: layer/ and rootfs/ mount points, and a formatted layer.img. */
async function fakeSandbox(opts: { format?: boolean } = {}): Promise<Fake> {
  const dir = path.join(base, `sb-${String(++n).padStart(12, "0")}`);
  mkdirSync(dir, { mode: 0o711 });
  const f = {
    dir,
    layer: path.join(dir, "layer"),
    layerImage: path.join(dir, "layer.img"),
    rootfs: path.join(dir, "rootfs"),
  };
  mkdirSync(f.layer, { mode: 0o711 });
  mkdirSync(f.rootfs, { mode: 0o711 });
  if (opts.format !== false) {
    writeFileSync(f.layerImage, "", { mode: 0o600 });
    truncateSync(f.layerImage, 64 << 20);
    const r = await runCommand(ext4FormatArgv(f.layerImage, 4096));
    expect(r.code).toBe(0);
  }
  return f;
}

const plan = (kind: LayerMountPlan["kind"], lowerdir = lower): LayerMountPlan => ({
  kind,
  diskBytes: 64 << 20,
  inodes: 4096,
  rootUid: ROOT_UID,
  lowerdir,
});

async function helper(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(BIN, argv);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

async function nothingLeft(f: Fake): Promise<void> {
  expect(await mountsUnder(f.dir)).toEqual([]);
  expect(await loopDevicesUnder(f.dir)).toEqual([]);
}

async function down(f: Fake): Promise<void> {
  const r = await helper(layerOpsArgv(planLayerDown(f, await mountsUnder(f.dir))));
  expect(r).toMatchObject({ code: 0, stderr: "" });
  await nothingLeft(f);
}

/** Check a mounted fake, then take it down (also when the check failed). */
async function mounted(f: Fake, check: () => Promise<void> | void): Promise<void> {
  try {
    await check();
  } finally {
    await down(f);
  }
}

/** Attach `file` to a free loop device without autoclear (as a crash would leave it). */
async function attach(file: string): Promise<string> {
  const r = await runCommand(["losetup", "--find", "--show", file]);
  expect(r.code).toBe(0);
  return r.stdout.trim();
}

describe("layer-up and layer-down", () => {
  it("a loop-backed ext4: mounted as planned, then gone with its loop device", async () => {
    const f = await fakeSandbox();
    const r = await helper(layerOpsArgv(planLayerUp(f, plan("ext4-loop"))));
    expect(r).toMatchObject({ code: 0, stderr: "" });
    const device = /^loop (\/dev\/loop\d+)\n$/.exec(r.stdout)?.[1];
    expect(device).toBeDefined();
    await mounted(f, async () => {
      expect(await loopDevicesUnder(f.dir)).toEqual([{ name: device, backFile: f.layerImage }]);
      const name = path.basename(device!);
      expect(readFileSync(`/sys/block/${name}/loop/autoclear`, "utf8").trim()).toBe("1");
      // The overlay is on top of the layer, and both are listed for unmounting.
      expect(await mountsUnder(f.dir)).toEqual([f.rootfs, f.layer]);
      const info = readFileSync("/proc/self/mountinfo", "utf8").split("\n");
      const layerLine = info.find((l) => l.split(" ")[4] === f.layer)!;
      expect(layerLine).toMatch(
        / rw,nosuid,nodev,noatime( \S+)* - ext4 \/dev\/loop\d+ rw,nobarrier,noinit_itable$/,
      );
      const rootLine = info.find((l) => l.split(" ")[4] === f.rootfs)!;
      expect(rootLine).toContain(
        ` - overlay corral-root rw,lowerdir=${lower},upperdir=${f.layer}/upper,workdir=${f.layer}/work`,
      );
      expect(rootLine.split(" ")[5]).toMatch(/^rw,nosuid,nodev/);
      const upper = statSync(path.join(f.layer, "upper"));
      expect([upper.mode & 0o7777, upper.uid, upper.gid]).toEqual([0o755, ROOT_UID, ROOT_UID]);
      const work = statSync(path.join(f.layer, "work"));
      expect([work.mode & 0o7777, work.uid, work.gid]).toEqual([0o700, 0, 0]);
      // The image shows through, and writes land in the layer.
      expect(readFileSync(path.join(f.rootfs, "from-image"), "utf8")).toBe("image\n");
      writeFileSync(path.join(f.rootfs, "new"), "x");
      expect(existsSync(path.join(f.layer, "upper", "new"))).toBe(true);
    });
  });

  it("a tmpfs layer: size, inode cap and mode as planned, then gone", async () => {
    const f = await fakeSandbox({ format: false });
    const r = await helper(layerOpsArgv(planLayerUp(f, plan("tmpfs"))));
    await mounted(f, () => {
      expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
      const info = readFileSync("/proc/self/mountinfo", "utf8").split("\n");
      const layerLine = info.find((l) => l.split(" ")[4] === f.layer)!;
      expect(layerLine).toMatch(
        / rw,nosuid,nodev,relatime( \S+)* - tmpfs corral-layer rw,size=65536k,nr_inodes=4096,mode=711$/,
      );
      expect(statSync(path.join(f.layer, "upper")).uid).toBe(ROOT_UID);
    });
  });

  it("several at once each get a loop device of their own (a device taken meanwhile is skipped)", async () => {
    const fakes = await Promise.all([1, 2, 3, 4].map(() => fakeSandbox()));
    const results = await Promise.all(
      fakes.map((f) => helper(layerOpsArgv(planLayerUp(f, plan("ext4-loop"))))),
    );
    try {
      expect(results.map((r) => r.code)).toEqual([0, 0, 0, 0]);
      const devices = results.map((r) => r.stdout.trim());
      expect(new Set(devices).size).toBe(4);
    } finally {
      for (const f of fakes) await down(f);
    }
  });

  it("a layer-up that fails half-way undoes its mounts and frees its loop device", async () => {
    const f = await fakeSandbox();
    const r = await helper(
      layerOpsArgv(planLayerUp(f, plan("ext4-loop", path.join(base, "no-such-image")))),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^corral-supervisor: layer-up: .*no-such-image: No such file/);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    await nothingLeft(f);
  });

  it("layer-down detaches a loop device left bound to a file under the directory (gc's case)", async () => {
    const f = await fakeSandbox();
    const g = await fakeSandbox();
    // Without autoclear, as a crash between attach and mount would leave it; and one
    // whose file is already deleted.
    const kept = await attach(f.layerImage);
    const orphan = await attach(g.layerImage);
    rmSync(g.layerImage);
    try {
      expect((await loopDevicesUnder(f.dir)).map((l) => l.name)).toEqual([kept]);
      expect((await loopDevicesUnder(g.dir)).map((l) => l.name)).toEqual([orphan]);
      const r = await helper(layerOpsArgv(planLayerDown(f, [])));
      expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
      expect(await loopDevicesUnder(f.dir)).toEqual([]);
      // Only the devices under the directory it was given.
      expect((await loopDevicesUnder(g.dir)).map((l) => l.name)).toEqual([orphan]);
      const s = await helper(layerOpsArgv(planLayerDown(g, [])));
      expect(s).toEqual({ code: 0, stdout: "", stderr: "" });
      expect(await loopDevicesUnder(g.dir)).toEqual([]);
    } finally {
      await runCommand(["losetup", "--detach", kept]);
      await runCommand(["losetup", "--detach", orphan]);
    }
    await nothingLeft(f);
    await nothingLeft(g);
  });

  it("layer-down told the layer's device detaches that one, and no device of another file", async () => {
    const f = await fakeSandbox();
    const g = await fakeSandbox();
    const own = await attach(f.layerImage);
    const other = await attach(g.layerImage);
    try {
      // Told another sandbox's device: that device's file is not under f, so it stays.
      const wrong = await helper(layerOpsArgv(planLayerDown(f, [], other)));
      expect(wrong).toEqual({ code: 0, stdout: "", stderr: "" });
      expect((await loopDevicesUnder(g.dir)).map((l) => l.name)).toEqual([other]);
      expect((await loopDevicesUnder(f.dir)).map((l) => l.name)).toEqual([own]);
      // Told its own: detached, and waited for until it is free.
      const r = await helper(layerOpsArgv(planLayerDown(f, [], own)));
      expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
      expect(await loopDevicesUnder(f.dir)).toEqual([]);
      expect((await loopDevicesUnder(g.dir)).map((l) => l.name)).toEqual([other]);
    } finally {
      await runCommand(["losetup", "--detach", own]);
      await runCommand(["losetup", "--detach", other]);
    }
    await nothingLeft(f);
    await nothingLeft(g);
  });

  it("layer-down is safe to repeat and with nothing mounted", async () => {
    const f = await fakeSandbox();
    await down(f);
    const again = await helper(layerOpsArgv(planLayerDown(f, [f.rootfs, f.layer])));
    expect(again).toEqual({ code: 0, stdout: "", stderr: "" });
  });

  it("follows no symbolic link: not in a mount target, a backing file or an overlay directory", async () => {
    const f = await fakeSandbox();
    const elsewhere = path.join(base, "elsewhere");
    mkdirSync(elsewhere, { recursive: true, mode: 0o711 });
    // The layer's mount point swapped for a link to another directory.
    rmSync(f.layer, { recursive: true });
    symlinkSync(elsewhere, f.layer);
    const r = await helper(layerOpsArgv(planLayerUp(f, plan("ext4-loop"))));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("Too many levels of symbolic links");
    await nothingLeft(f);
    expect(await mountsUnder(elsewhere)).toEqual([]);
    // The backing file a link to a real one.
    const g = await fakeSandbox();
    const real = `${g.layerImage}.real`;
    writeFileSync(real, "");
    rmSync(g.layerImage);
    symlinkSync(real, g.layerImage);
    const s = await helper(layerOpsArgv(planLayerUp(g, plan("ext4-loop"))));
    expect(s.code).toBe(1);
    expect(s.stderr).toContain("Too many levels of symbolic links");
    await nothingLeft(g);
    // The image (lower directory) reached through a link.
    const link = path.join(base, "lower-link");
    if (!existsSync(link)) symlinkSync(lower, link);
    const h = await fakeSandbox();
    const t = await helper(layerOpsArgv(planLayerUp(h, plan("ext4-loop", link))));
    expect(t.code).toBe(1);
    expect(t.stderr).toContain("Too many levels of symbolic links");
    await nothingLeft(h);
  });

  it.each<[string, (f: Fake) => string[]]>([
    ["an unknown step", (f) => ["layer-up", f.dir, "bind", lower, f.rootfs]],
    ["a down step in an up plan", (f) => ["layer-up", f.dir, "umount", f.rootfs]],
    ["a missing argument", (f) => ["layer-up", f.dir, "mkdir", `${f.dir}/x`, "0755", "0"]],
    ["a target outside WITHIN", (f) => ["layer-down", f.dir, "umount", "/proc"]],
    ["WITHIN itself", (f) => ["layer-down", f.dir, "umount", f.dir]],
    ["a path with ..", (f) => ["layer-down", f.dir, "umount", `${f.dir}/../x`]],
    ["a relative WITHIN", () => ["layer-down", "tmp", "umount", "tmp/x"]],
    ["an unknown flag", (f) => [...up(f, "ext4", "nosuid,exec", "")]],
    ["a repeated flag", (f) => [...up(f, "ext4", "nosuid,nosuid", "")]],
    ["an ext4 option not in the list", (f) => [...up(f, "ext4", "nosuid", "errors=continue")]],
    ["a repeated ext4 option", (f) => [...up(f, "ext4", "nosuid", "nobarrier,nobarrier")]],
    ["another file system", (f) => ["layer-up", f.dir, "mount", "x", f.layer, "proc", "", ""]],
    [
      "a tmpfs option not in the list",
      (f) => ["layer-up", f.dir, "mount", "corral-layer", f.layer, "tmpfs", "", "size=1,uid=0"],
    ],
    [
      "an overlay option not in the list",
      (f) => [
        ...["layer-up", f.dir, "mount", "corral-root", f.rootfs, "overlay", ""],
        `lowerdir=${lower},upperdir=${f.dir}/u,workdir=${f.dir}/w,redirect_dir=on`,
      ],
    ],
    [
      "an overlay's upper directory outside WITHIN",
      (f) => [
        ...["layer-up", f.dir, "mount", "corral-root", f.rootfs, "overlay", ""],
        `lowerdir=${lower},upperdir=/tmp/u,workdir=${f.dir}/w`,
      ],
    ],
    ["a mode above 0777", (f) => ["layer-up", f.dir, "mkdir", `${f.dir}/x`, "4755", "0", "0"]],
    [
      "an owner of -1",
      (f) => ["layer-up", f.dir, "mkdir", `${f.dir}/x`, "0755", "4294967295", "0"],
    ],
  ])("refuses %s, running no step", async (_what, argv) => {
    const f = await fakeSandbox({ format: false });
    const r = await helper(argv(f));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^corral-supervisor: layer-(up|down): /);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(existsSync(path.join(f.dir, "x"))).toBe(false);
    await nothingLeft(f);
  });

  it("refuses a WITHIN that someone else could write", async () => {
    const f = await fakeSandbox({ format: false });
    const open = path.join(base, "open");
    mkdirSync(open);
    chmodSync(open, 0o777); // mkdirSync's mode goes through the umask
    const r = await helper(["layer-up", open, "mkdir", `${open}/x`, "0755", "0", "0"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("no one else can write");
    expect(existsSync(path.join(open, "x"))).toBe(false);
    await nothingLeft(f);
  });
});

function up(f: Fake, fstype: string, flags: string, data: string): string[] {
  return ["layer-up", f.dir, "loop-mount", f.layerImage, f.layer, fstype, flags, data];
}

describe("layer-serve", () => {
  const pgrepServe = async (root: string) =>
    (await runCommand(["pgrep", "-f", `layer-serve ${root}$`])).stdout.trim();

  it("runs the same plans as the one-shot modes, one child each, and ends at close", async () => {
    const server = new LayerServer(BIN, base);
    try {
      const f = await fakeSandbox();
      const up = await server.run(layerOpsArgv(planLayerUp(f, plan("ext4-loop"))));
      expect(up).toMatchObject({ code: 0, stderr: "" });
      expect(up.stdout).toMatch(/^loop \/dev\/loop\d+\n$/);
      expect(await mountsUnder(f.dir)).toEqual([f.rootfs, f.layer]);
      const down = await server.run(layerOpsArgv(planLayerDown(f, await mountsUnder(f.dir))));
      expect(down).toEqual({ code: 0, stdout: "", stderr: "" });
      await nothingLeft(f);
      // A failing plan answers like the one-shot mode, and the server goes on.
      const g = await fakeSandbox();
      const bad = await server.run(
        layerOpsArgv(planLayerUp(g, plan("ext4-loop", path.join(base, "no-such-image")))),
      );
      expect(bad.code).toBe(1);
      expect(bad.stderr).toMatch(/^corral-supervisor: layer-up: .*no-such-image: No such file/);
      await nothingLeft(g);
      expect(server.usable).toBe(true);
      expect(await pgrepServe(base)).not.toBe("");
    } finally {
      server.close();
    }
    const deadline = Date.now() + 5000;
    while ((await pgrepServe(base)) !== "" && Date.now() < deadline) await sleep(20);
    expect(await pgrepServe(base)).toBe("");
  });

  it("refuses a plan for a directory outside its root, and one of another mode", async () => {
    const inner = path.join(base, "serve-root");
    mkdirSync(inner, { recursive: true, mode: 0o711 });
    const server = new LayerServer(BIN, inner);
    try {
      const f = await fakeSandbox(); // under base, not under inner
      const r = await server.run(layerOpsArgv(planLayerDown(f, [])));
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`a plan is layer-up or layer-down of a directory under ${inner}`);
      const other = await server.run(["host-listen", `${inner}/x`, "--", "/bin/true"]);
      expect(other.code).toBe(2);
    } finally {
      server.close();
    }
  });

  it("a malformed request ends the server with one line (the host then goes without it)", async () => {
    const child = execFile(BIN, ["layer-serve", base]);
    let stderr = "";
    child.stderr?.on("data", (c) => {
      stderr += c;
    });
    const code = await new Promise<number | null>((resolve) => {
      child.once("exit", resolve);
      // A length of 3 and a body that does not end with a NUL.
      child.stdin?.end(Buffer.from([0, 0, 0, 3, 0x61, 0x62, 0x63]));
    });
    expect(code).toBe(2);
    expect(stderr).toBe("corral-supervisor: layer-serve: malformed request\n");
  });

  it("a mounter whose server dies runs the plan with the one-shot mode, and goes on so", async () => {
    const mounter = new LayerMounter(BIN, null, base);
    try {
      const f = await fakeSandbox();
      await mounter.run(planLayerDown(f, []), "first");
      expect(mounter.resident).toBe(true);
      const pid = Number((await pgrepServe(base)).split("\n")[0]);
      expect(pid).toBeGreaterThan(0);
      process.kill(pid, "SIGKILL");
      await sleep(100);
      const done = await mounter.run(planLayerUp(f, plan("ext4-loop")), "after");
      expect(done.kind).toBe("done");
      expect(mounter.resident).toBe(false);
      expect(mounter.direct).toBe(true);
      await down(f);
    } finally {
      mounter.close();
    }
  });
});

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe("sandboxes", () => {
  it("create and destroy go through the helper: the layer's loop device is gone after destroy", async () => {
    expect(env.host.layerMounter.direct).toBe(true);
    expect(env.host.layerMounter.resident).toBe(true);
    const sandbox = await Sandbox.create(env.host, {
      image: env.image,
      limits: { ...DEFAULT_LIMITS },
    });
    try {
      const loops = await loopDevicesUnder(sandbox.paths.dir);
      expect(loops.map((l) => l.backFile)).toEqual([sandbox.paths.layerImage]);
      const r = await sandbox.exec({
        argv: ["sh", "-c", "echo hi > /work/x && cat /work/x"],
        timeoutMs: 10_000,
        outputCapBytes: 1024,
      });
      expect(r.stdout.bytes().toString()).toBe("hi\n");
    } finally {
      await sandbox.destroy();
    }
    expect(env.host.layerMounter.direct).toBe(true);
    expect(await mountsUnder(sandbox.paths.dir)).toEqual([]);
    expect(await loopDevicesUnder(sandbox.paths.dir)).toEqual([]);
    expect(existsSync(sandbox.paths.dir)).toBe(false);
  });

  it("a helper that cannot run: mount(8) takes over, for good, with the reason kept", async () => {
    const saved = env.host.layerMounter;
    const broken = new LayerMounter(path.join(base, "no-such-binary"));
    env.host.layerMounter = broken;
    try {
      const r = await env.run("shell", "echo ok > /work/f && cat /work/f");
      expect(r.stdout.text).toBe("ok\n");
      expect(broken.direct).toBe(false);
      expect(broken.fallback).toMatch(/no-such-binary: .*ENOENT/);
    } finally {
      env.host.layerMounter = saved;
    }
  });
});
