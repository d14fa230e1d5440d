/**
 * Build an image from a recipe: debootstrap a minimal Debian, install the recipe's packages
 * with apt in a chroot, run its setup commands, clean up, shift ownership to the sandboxes'
 * id range, digest the tree, and publish it with one atomic rename. A second build of the
 * same recipe and mirror is a cache hit and returns at once; concurrent builds of the same
 * key wait for each other on a lock.
 *
 * Why not `debootstrap --include=<all packages>`: debootstrap's own resolver ignores
 * virtual packages and alternatives, so a real package set (python3-ipykernel pulls
 * python3-zmq, which needs python3-cffi-backend-api-max) fails after minutes of work at the
 * configure stage. A minbase debootstrap followed by apt, whose resolver is complete, is
 * both correct and no slower.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream, type WriteStream } from "node:fs";
import {
  chmod,
  copyFile,
  lstat,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import path from "node:path";
import { CorralError, oneLine } from "../core/errors.js";
import { acquireLock } from "../core/lock.js";
import { runCommand } from "../core/proc.js";
import { findOnPath } from "../sandbox/prerequisites.js";
import { unmountAllUnder } from "../sandbox/runtime/mounts.js";
import { digestTree } from "./digest.js";
import { normaliseRecipe, type Recipe, recipeKey, shortKey } from "./recipe.js";
import { shiftTree } from "./shift.js";
import {
  ensureImageDir,
  type ImageMeta,
  imageInUse,
  imageLockName,
  imagePaths,
  META_VERSION,
  readImageMeta,
  readNames,
  removeCacheDir,
  type StoredImage,
  setImageName,
  takeImageLock,
  writeImageMeta,
} from "./store.js";

export interface BuildProgress {
  /** debootstrap, packages, setup i/n, cleanup, shift, digest */
  step: string;
  /** Of the whole build, 0..1. */
  fraction: number;
  /** What the step is doing now (a package name), when known. */
  detail?: string;
}

export interface BuildOptions {
  recipe: Recipe;
  /** The Debian mirror URL (see mirror.ts for the host's). */
  mirror: string;
  imageDir: string;
  /** The host id that is 0 inside sandboxes: the tree is shifted to it. */
  uidBase: number;
  onProgress?: (progress: BuildProgress) => void;
  /** Stops the build (the running command is terminated, everything is cleaned up). */
  signal?: AbortSignal;
}

export interface BuildResult extends StoredImage {
  /** True when the image was already built and nothing was done. */
  cached: boolean;
}

const SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const STEP_TIMEOUT_MS = 60 * 60_000;

/** Relative durations measured on a two-core machine, to turn steps into one fraction. */
function planSteps(recipe: Recipe): { name: string; weight: number }[] {
  const n = recipe.setup.length;
  return [
    { name: "debootstrap", weight: 40 },
    // The default recipe's 25 packages pull in about 260 and take about 125 s.
    ...(recipe.packages.length > 0
      ? [{ name: "packages", weight: Math.min(150, 5 * recipe.packages.length) }]
      : []),
    ...recipe.setup.map((_, i) => ({ name: `setup ${i + 1}/${n}`, weight: 3 })),
    { name: "cleanup", weight: 1 },
    { name: "shift", weight: 3 },
    { name: "digest", weight: 8 },
  ];
}

function progressReporter(recipe: Recipe, onProgress?: (p: BuildProgress) => void) {
  const steps = planSteps(recipe);
  const total = steps.reduce((sum, s) => sum + s.weight, 0);
  return (step: string, within: number, detail?: string): void => {
    if (!onProgress) return;
    let before = 0;
    let weight = 0;
    for (const s of steps) {
      if (s.name === step) {
        weight = s.weight;
        break;
      }
      before += s.weight;
    }
    const fraction = Math.min(1, (before + weight * Math.max(0, Math.min(1, within))) / total);
    onProgress({ step, fraction, ...(detail !== undefined ? { detail } : {}) });
  };
}

/**
 * Run a command with its output appended to the build log, line by line to `onLine` as
 * well. Resolves with the exit code (128+n for a signal). It stays in our process group,
 * so that Ctrl-C at a terminal reaches it too; it is killed after the timeout, and
 * terminated when `signal` aborts.
 */
function runLogged(
  argv: readonly string[],
  log: WriteStream,
  options: {
    env: NodeJS.ProcessEnv;
    onLine?: (line: string) => void;
    timeoutMs?: number;
    signal?: AbortSignal | undefined;
  },
): Promise<number> {
  const [file, ...args] = argv;
  if (file === undefined) throw new Error("runLogged: empty argv");
  log.write(`\n$ ${argv.join(" ")}\n`);
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      env: options.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const onAbort = (): void => {
      child.kill("SIGTERM");
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    let pending = "";
    const onData = (chunk: Buffer): void => {
      log.write(chunk);
      if (!options.onLine) return;
      pending += chunk.toString("utf8");
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) options.onLine(line.replace(/\r$/, ""));
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    const timer = setTimeout(() => {
      log.write(
        `\n[corral] timed out after ${(options.timeoutMs ?? STEP_TIMEOUT_MS) / 1000} s: killing\n`,
      );
      child.kill("SIGKILL");
    }, options.timeoutMs ?? STEP_TIMEOUT_MS);
    child.on("error", (err) => {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      if (pending && options.onLine) options.onLine(pending);
      resolve(code ?? (signal ? 128 + (signalNumber(signal) ?? 0) : 1));
    });
  });
}

function signalNumber(signal: NodeJS.Signals): number | undefined {
  const map: Partial<Record<NodeJS.Signals, number>> = {
    SIGKILL: 9,
    SIGTERM: 15,
    SIGINT: 2,
    SIGSEGV: 11,
  };
  return map[signal];
}

/** The environment of every command run in the chroot: nothing from the host leaks in. */
export function chrootEnv(recipe: Recipe): Record<string, string> {
  return {
    PATH: SYSTEM_PATH,
    HOME: "/root",
    LANG: "C.UTF-8",
    DEBIAN_FRONTEND: "noninteractive",
    ...recipe.env,
  };
}

/** Mount what apt and setup commands need in the chroot, run `fn`, and always unmount. */
async function withChrootMounts<T>(rootfs: string, fn: () => Promise<T>): Promise<T> {
  try {
    const proc = await runCommand([
      "mount",
      "-t",
      "proc",
      "-o",
      "nosuid,nodev,noexec",
      "proc",
      path.join(rootfs, "proc"),
    ]);
    if (proc.code !== 0)
      throw new CorralError(
        "build_failed",
        `mounting /proc in the build chroot failed: ${proc.stderr.trim()}`,
      );
    // debootstrap makes real device nodes in /dev on a host; in a container it bind-mounts
    // them instead and leaves /dev empty. Never bind the host's /dev: a later rm -rf of the
    // build directory would go through it.
    let haveNull = false;
    try {
      haveNull = (await lstat(path.join(rootfs, "dev/null"))).isCharacterDevice();
    } catch {
      haveNull = false;
    }
    if (!haveNull) {
      const dev = path.join(rootfs, "dev");
      const r = await runCommand([
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "nosuid,mode=0755,size=1m",
        "corral-build-dev",
        dev,
      ]);
      if (r.code !== 0)
        throw new CorralError(
          "build_failed",
          `mounting /dev in the build chroot failed: ${r.stderr.trim()}`,
        );
      for (const [name, major, minor] of [
        ["null", 1, 3],
        ["zero", 1, 5],
        ["full", 1, 7],
        ["random", 1, 8],
        ["urandom", 1, 9],
        ["tty", 5, 0],
      ] as const) {
        await runCommand([
          "mknod",
          "-m",
          "666",
          path.join(dev, name),
          "c",
          String(major),
          String(minor),
        ]);
      }
    }
    return await fn();
  } finally {
    await unmountAllUnder(path.join(rootfs, "proc"));
    await unmountAllUnder(path.join(rootfs, "dev"));
  }
}

async function lastLines(file: string, pattern: RegExp): Promise<string | undefined> {
  try {
    const text = await readFile(file, "utf8");
    return text
      .split("\n")
      .filter((l) => pattern.test(l))
      .pop();
  } catch {
    return undefined;
  }
}

/** Leftovers of crashed builds and removals of `key` (or of every key), by directory name. */
function leftoverKey(name: string): string | null {
  return /^\.(tmp|old|rm)-([0-9a-f]{16})-[0-9a-f]+$/.exec(name)?.[2] ?? null;
}

/**
 * Remove what crashed builds (or imports) of `key` left behind: their chroot mounts and half-built
 * trees, and replaced or removed images no sandbox uses any more. The caller holds the
 * key's lock, so nobody is building it.
 */
export async function removeLeftovers(
  imageDir: string,
  key: string,
  dryRun = false,
): Promise<string[]> {
  let entries: string[] = [];
  try {
    entries = await readdir(imageDir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of entries) {
    if (leftoverKey(name) !== key) continue;
    const dir = path.join(imageDir, name);
    if (name.startsWith(".tmp-")) {
      if (!dryRun) {
        await unmountAllUnder(dir);
        await removeCacheDir(imageDir, dir);
      }
      removed.push(dir);
    } else if (!(await imageInUse(dir))) {
      if (!dryRun) await removeCacheDir(imageDir, dir);
      removed.push(dir);
    }
  }
  return removed;
}

/**
 * For `corral gc`: remove the leftovers of every crashed build in the image cache (a build
 * in progress holds its key's lock and is left alone). Returns the directories removed
 * (or, with `dryRun`, that would be).
 */
export async function collectBuildLeftovers(
  imageDir: string,
  options: { dryRun?: boolean } = {},
): Promise<string[]> {
  let entries: string[] = [];
  try {
    entries = await readdir(imageDir);
  } catch {
    return [];
  }
  const keys = new Set(entries.map(leftoverKey).filter((k): k is string => k !== null));
  const removed: string[] = [];
  for (const key of keys) {
    const release = await acquireLock(imageLockName(imageDir, key));
    if (!release) continue;
    try {
      removed.push(...(await removeLeftovers(imageDir, key, options.dryRun === true)));
    } finally {
      await release();
    }
  }
  return removed;
}

async function cachedImage(
  imageDir: string,
  key: string,
  fullKey: string,
  uidBase: number,
): Promise<StoredImage | null> {
  const meta = await readImageMeta(imageDir, key);
  if (!meta || meta.recipeKey !== fullKey || meta.uidBase !== uidBase) return null;
  const paths = imagePaths(imageDir, key);
  try {
    if (!(await stat(paths.rootfs)).isDirectory()) return null;
  } catch {
    return null;
  }
  return { meta, dir: paths.dir, rootfs: paths.rootfs, names: [] };
}

export async function publishName(imageDir: string, image: StoredImage): Promise<StoredImage> {
  try {
    await setImageName(imageDir, image.meta.name, image.meta.key);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EACCES" || code === "EPERM" || code === "EROFS") {
      throw new CorralError(
        "prerequisite_missing",
        `cannot write to the image cache ${imageDir}: ${code}`,
        "run as root",
      );
    }
    throw err;
  }
  const names = [...(await readNames(imageDir))]
    .filter(([, k]) => k === image.meta.key)
    .map(([n]) => n);
  return { ...image, names };
}

export async function buildImage(options: BuildOptions): Promise<BuildResult> {
  const recipe = normaliseRecipe(options.recipe);
  const mirror = options.mirror.replace(/\/+$/, "");
  const { imageDir, uidBase } = options;
  const fullKey = recipeKey(recipe, mirror);
  const key = shortKey(fullKey);

  const hit = await cachedImage(imageDir, key, fullKey, uidBase);
  if (hit) return { ...(await publishName(imageDir, hit)), cached: true };

  if (process.getuid?.() !== 0) {
    throw new CorralError(
      "prerequisite_missing",
      "building an image needs root (debootstrap, chroot, chown)",
      "run it with sudo",
    );
  }
  for (const tool of ["debootstrap", "chroot", "mount"]) {
    if (!(await findOnPath(tool))) {
      throw new CorralError(
        "prerequisite_missing",
        `${tool} is not installed`,
        `apt-get install ${tool === "debootstrap" ? "debootstrap" : "coreutils mount"}`,
      );
    }
  }
  await ensureImageDir(imageDir);
  const release = await takeImageLock(imageDir, key, {
    signal: options.signal,
    onWait: () =>
      options.onProgress?.({ step: "waiting", fraction: 0, detail: "another build of this image" }),
  });
  try {
    // Someone else may have built it while we waited for the lock.
    const built = await cachedImage(imageDir, key, fullKey, uidBase);
    if (built) return { ...(await publishName(imageDir, built)), cached: true };
    await removeLeftovers(imageDir, key);
    const image = await buildLocked({ ...options, recipe, mirror }, fullKey, key);
    return { ...(await publishName(imageDir, image)), cached: false };
  } finally {
    await release();
  }
}

async function buildLocked(
  options: BuildOptions,
  fullKey: string,
  key: string,
): Promise<StoredImage> {
  const { recipe, mirror, imageDir, uidBase, onProgress, signal } = options;
  const started = Date.now();
  const report = progressReporter(recipe, onProgress);
  const tmp = path.join(imageDir, `.tmp-${key}-${randomBytes(4).toString("hex")}`);
  const rootfs = path.join(tmp, "rootfs");
  const logFile = path.join(tmp, "build.log");
  const failedLog = path.join(imageDir, "logs", `${key}.log`);
  await mkdir(tmp, { mode: 0o711 });
  await chmod(tmp, 0o711);
  const log = createWriteStream(logFile, { flags: "a" });
  // A log that cannot be written must not crash the build; the build's own errors matter more.
  log.on("error", () => {});
  let logOpen = true;
  const closeLog = (): Promise<void> =>
    logOpen
      ? new Promise<void>((resolve) => {
          logOpen = false;
          log.end(resolve);
        })
      : Promise.resolve();
  const fail = (what: string): CorralError =>
    new CorralError("build_failed", `${what}; see ${failedLog}`);
  const stopIfAborted = (): void => {
    if (signal?.aborted)
      throw new CorralError("build_failed", "image build interrupted: nothing was kept");
  };
  log.write(
    `[corral] building image ${recipe.name} (key ${fullKey}) from ${mirror} at ${new Date().toISOString()}\n`,
  );

  try {
    // 1. debootstrap: a minimal base system.
    report("debootstrap", 0);
    let seen = 0;
    let retrieved = 0;
    const deb = await runLogged(
      [
        "debootstrap",
        "--variant=minbase",
        `--arch=${recipe.architecture}`,
        recipe.suite,
        rootfs,
        mirror,
      ],
      log,
      {
        env: { ...process.env, LC_ALL: "C", DEBIAN_FRONTEND: "noninteractive" },
        signal,
        onLine: (line) => {
          const m = /^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) (\S+)/.exec(line);
          if (!m) return;
          seen++;
          if (m[1] === "Retrieving") retrieved++;
          // Each of ~90 minbase packages passes through five of these lines.
          report(
            "debootstrap",
            seen / (5 * Math.max(90, retrieved)),
            `${m[1]?.toLowerCase()} ${m[2]?.replace(/\.+$/, "")}`,
          );
        },
      },
    );
    stopIfAborted();
    if (deb !== 0) {
      try {
        log.write(
          `\n[corral] debootstrap's own log:\n${await readFile(path.join(rootfs, "debootstrap/debootstrap.log"), "utf8")}`,
        );
      } catch {
        // it failed before writing one
      }
      const last = await lastLines(logFile, /^E: /);
      throw fail(`debootstrap failed (exit ${deb})${last ? `: ${last.slice(3)}` : ""}`);
    }

    // Sandboxes run with no capabilities, and apt's drop to _apt needs setgroups.
    await writeFile(
      path.join(rootfs, "etc/apt/apt.conf.d/99corral"),
      'APT::Sandbox::User "root";\n',
      { mode: 0o644 },
    );
    // Build-time only: no daemons started by maintainer scripts, no fsync per file.
    const policyRcd = path.join(rootfs, "usr/sbin/policy-rc.d");
    const unsafeIo = path.join(rootfs, "etc/dpkg/dpkg.cfg.d/corral-build-unsafe-io");
    await writeFile(policyRcd, "#!/bin/sh\n# corral build: start no services\nexit 101\n", {
      mode: 0o755,
    });
    await writeFile(unsafeIo, "force-unsafe-io\n", { mode: 0o644 });

    const env = chrootEnv(recipe);
    await withChrootMounts(rootfs, async () => {
      // 2. packages, with apt's resolver.
      if (recipe.packages.length > 0) {
        report("packages", 0);
        let total = 0;
        let done = 0;
        const apt = await runLogged(
          [
            "chroot",
            rootfs,
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            "-o",
            "Dpkg::Use-Pty=0",
            ...recipe.packages,
          ],
          log,
          {
            env: { ...env, PATH: SYSTEM_PATH },
            signal,
            onLine: (line) => {
              const n = /(\d+) newly installed/.exec(line);
              if (n) total = Number(n[1]);
              const m = /^(Unpacking|Setting up) (\S+)/.exec(line);
              if (m && total > 0) {
                done++;
                report(
                  "packages",
                  done / (2 * total),
                  `${m[1] === "Unpacking" ? "unpacking" : "setting up"} ${m[2]}`,
                );
              }
            },
          },
        );
        stopIfAborted();
        if (apt !== 0) {
          const last = await lastLines(logFile, /^E: /);
          throw fail(`apt-get install failed (exit ${apt})${last ? `: ${last.slice(3)}` : ""}`);
        }
      }

      // 3. setup commands, in order.
      for (const [i, command] of recipe.setup.entries()) {
        const step = `setup ${i + 1}/${recipe.setup.length}`;
        report(step, 0, oneLine(command).slice(0, 60));
        const code = await runLogged(["chroot", rootfs, "/bin/sh", "-c", command], log, {
          env,
          signal,
        });
        stopIfAborted();
        if (code !== 0) {
          const shown = oneLine(command);
          throw fail(
            `${step} failed (exit ${code}): ${shown.length > 80 ? `${shown.slice(0, 77)}...` : shown}`,
          );
        }
      }

      // 4. cleanup: no package cache or index in the image (sandboxes have no network anyway).
      report("cleanup", 0);
      await runLogged(["chroot", rootfs, "apt-get", "clean"], log, {
        env: { ...env, PATH: SYSTEM_PATH },
        signal,
      });
    });
    await rm(policyRcd, { force: true });
    await rm(unsafeIo, { force: true });
    const lists = path.join(rootfs, "var/lib/apt/lists");
    for (const name of await readdir(lists)) {
      if (name !== "partial" && name !== "lock")
        await rm(path.join(lists, name), { recursive: true, force: true });
    }
    // debootstrap copies these from the host; a sandbox must not learn the host's.
    await writeFile(path.join(rootfs, "etc/resolv.conf"), "", { mode: 0o644 });
    await writeFile(path.join(rootfs, "etc/hostname"), "sandbox\n", { mode: 0o644 });
    report("cleanup", 1);

    // 5. shift to the sandboxes' ids, once.
    stopIfAborted();
    report("shift", 0);
    const shifted = await shiftTree(rootfs, uidBase, {
      onProgress: (n) => report("shift", Math.min(0.99, n / 60_000)),
    });
    log.write(
      `\n[corral] shifted ${shifted.entries} entries by ${uidBase} (${shifted.specialModes} setuid/setgid/sticky modes restored)\n`,
    );

    // 6. digest.
    stopIfAborted();
    report("digest", 0);
    const digest = await digestTree(rootfs, {
      idBase: uidBase,
      expectedEntries: shifted.visited,
      onProgress: (f) => report("digest", f),
    });
    log.write(
      `[corral] digest ${digest.digest} over ${digest.files} entries, ${digest.sizeBytes} bytes\n`,
    );

    // 7. publish: meta.json inside, then one rename makes the image visible.
    const meta: ImageMeta = {
      version: META_VERSION,
      status: "complete",
      key,
      recipeKey: fullKey,
      name: recipe.name,
      digest: digest.digest,
      created: new Date().toISOString(),
      mirror,
      suite: recipe.suite,
      architecture: recipe.architecture,
      packages: recipe.packages,
      setup: recipe.setup,
      env: recipe.env,
      uidBase,
      shifted: true,
      sizeBytes: digest.sizeBytes,
      files: digest.files,
      buildSeconds: Math.round((Date.now() - started) / 100) / 10,
    };
    const paths = imagePaths(imageDir, key);
    await writeImageMeta(path.join(tmp, "meta.json"), meta);
    log.write(`[corral] complete in ${meta.buildSeconds} s\n`);
    await closeLog();
    let old: string | null = null;
    try {
      await lstat(paths.dir);
      // An older build of this key (for another uid base, or left incomplete): replace it.
      old = path.join(imageDir, `.old-${key}-${randomBytes(4).toString("hex")}`);
      await rename(paths.dir, old);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    await rename(tmp, paths.dir);
    if (old !== null && !(await imageInUse(old))) await removeCacheDir(imageDir, old);
    report("digest", 1);
    return { meta, dir: paths.dir, rootfs: paths.rootfs, names: [] };
  } catch (err) {
    if (logOpen)
      log.write(`\n[corral] failed: ${err instanceof Error ? err.message : String(err)}\n`);
    await closeLog();
    try {
      await unmountAllUnder(tmp);
      await mkdir(path.dirname(failedLog), { recursive: true, mode: 0o755 });
      await copyFile(logFile, failedLog);
      await removeCacheDir(imageDir, tmp);
    } catch (cleanupError) {
      process.stderr.write(
        `corral: could not clean up ${tmp}: ${cleanupError instanceof Error ? cleanupError.message : String(cleanupError)}\n`,
      );
    }
    if (signal?.aborted) {
      throw new CorralError("build_failed", "image build interrupted: nothing was kept");
    }
    if (err instanceof CorralError) throw err;
    const message = err instanceof Error ? err.message : String(err);
    throw fail(`image build failed: ${message}`);
  }
}
