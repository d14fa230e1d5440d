/**
 * `corral demo`: the four real-data examples (R, Python, SQL, shell on R's airquality
 * data), each in its own fresh sandbox, checked against reference values that R computed
 * independently (examples/reference.json, with the command that produced it).
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import type { CorralConfig } from "../core/config.js";
import { CorralError } from "../core/errors.js";
import { DEFAULT_LIMITS, formatBytes } from "../core/limits.js";
import { packageRoot } from "../core/package-root.js";
import { runCommand } from "../core/proc.js";
import type { Language } from "../core/sandbox.js";
import { collectGarbage } from "../sandbox/gc.js";
import { openHost } from "../sandbox/host.js";
import { loadImageRef } from "../sandbox/image-ref.js";
import { checkHostPrerequisites, findOnPath } from "../sandbox/prerequisites.js";
import { runCode } from "../sandbox/run-code.js";
import { imageBuildCommand } from "./image.js";
import { reportError } from "./output.js";

const EXAMPLES_DIR = path.join(packageRoot(), "examples");

const STEPS: { language: Language; file: string; title: string }[] = [
  { language: "r", file: "airquality.R", title: "R: lm(Ozone ~ Solar.R + Wind + Temp)" },
  {
    language: "python",
    file: "airquality.py",
    title: "Python: pandas monthly means + matplotlib chart",
  },
  { language: "sql", file: "airquality.sql", title: "SQL: a SQLite database built from the CSV" },
  { language: "shell", file: "airquality.sh", title: "shell: a pipeline over the CSV" },
];

/** "key value" lines → a map (the examples print their results this way). */
export function parseKeyValues(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^(\S+)\s+(.+)$/.exec(line.trim());
    if (m) out[m[1]!] = m[2]!.trim();
  }
  return out;
}

/** Each expected key must be present and equal (numbers compared to 1e-4). */
export function compareToReference(
  got: Record<string, string>,
  want: Record<string, string>,
): string[] {
  const problems: string[] = [];
  for (const [key, expected] of Object.entries(want)) {
    const actual = got[key];
    if (actual === undefined) {
      problems.push(`${key}: missing (want ${expected})`);
      continue;
    }
    const a = Number(actual);
    const e = Number(expected);
    const same =
      Number.isFinite(a) && Number.isFinite(e)
        ? Math.abs(a - e) <= 1e-4 * Math.max(1, Math.abs(e))
        : actual === expected;
    if (!same) problems.push(`${key}: got ${actual}, want ${expected}`);
  }
  return problems;
}

async function installPrerequisites(yes: boolean): Promise<void> {
  const missing = [];
  if (!(await findOnPath("runc"))) missing.push("runc");
  if (!(await findOnPath("debootstrap"))) missing.push("debootstrap");
  if (!(await findOnPath("mkfs.ext4"))) missing.push("e2fsprogs");
  if (missing.length === 0) return;
  if (!yes) {
    throw new CorralError(
      "prerequisite_missing",
      `missing host packages: ${missing.join(", ")}`,
      `apt-get install ${missing.join(" ")}, or run corral demo --yes`,
    );
  }
  process.stderr.write(`corral: installing ${missing.join(", ")} with apt-get\n`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  await runCommand(["apt-get", "update", "-qq"], { timeoutMs: 600_000, env });
  const r = await runCommand(["apt-get", "install", "-y", "-qq", ...missing], {
    timeoutMs: 900_000,
    env,
  });
  if (r.code !== 0)
    throw new CorralError("prerequisite_missing", `apt-get install failed: ${r.stderr.trim()}`);
}

export async function demoCommand(
  config: CorralConfig,
  flags: { yes?: boolean; out: string },
): Promise<number> {
  try {
    await installPrerequisites(flags.yes === true);
    await checkHostPrerequisites(config, DEFAULT_LIMITS);
    try {
      await loadImageRef(config, "default");
    } catch (err) {
      if (!flags.yes) throw err;
      process.stderr.write(
        "corral: building the default image (about 3 minutes, once per machine)\n",
      );
      const code = await imageBuildCommand({
        imageDir: config.imageDir,
        uidBase: config.ids.base,
        json: false,
      });
      if (code !== 0) return code;
    }
    const image = await loadImageRef(config, "default");
    const reference = JSON.parse(
      await readFile(path.join(EXAMPLES_DIR, "reference.json"), "utf8"),
    ) as {
      command: string;
      values: Record<Language, Record<string, string>>;
    };
    const csv = await readFile(path.join(EXAMPLES_DIR, "data", "airquality.csv"));
    const outDir = path.resolve(flags.out);
    const limits = { ...DEFAULT_LIMITS };
    const host = await openHost(config);
    let failures = 0;
    try {
      await collectGarbage(host, { dryRun: false });
      process.stdout.write(
        `Corral demo: image ${image.digest.slice(0, 19)}; each example in a fresh sandbox with ` +
          `${formatBytes(limits.memoryBytes)} memory, ${limits.cpus} CPU, ${limits.pids} pids, ` +
          `${formatBytes(limits.diskBytes)} disk, ${limits.timeoutMs / 1000}s timeout, no network, ` +
          "no capabilities, seccomp allowlist, user namespace\n\n",
      );
      for (const step of STEPS) {
        const code = await readFile(path.join(EXAMPLES_DIR, step.file), "utf8");
        const result = await runCode(host, {
          language: step.language,
          code,
          image,
          limits,
          outDir,
          inputs: [{ path: "/work/airquality.csv", data: csv }],
        });
        const got = parseKeyValues(result.stdout.text);
        const problems = compareToReference(got, reference.values[step.language]);
        const ok = result.exitCode === 0 && result.killed === null && problems.length === 0;
        if (!ok) failures++;
        process.stdout.write(`== ${step.title}  [${ok ? "ok" : "MISMATCH"}]\n`);
        process.stdout.write(result.stdout.text.replace(/^/gm, "   ").trimEnd());
        process.stdout.write(
          `\n   -- sandbox ${result.sandbox}: exit ${result.exitCode}, ${result.durationMs} ms wall, ` +
            `${result.cpuMs ?? "?"} ms CPU, peak ${formatBytes(result.peakMemoryBytes ?? 0)}\n`,
        );
        if (result.exitCode !== 0)
          process.stdout.write(result.stderr.text.replace(/^/gm, "   !! "));
        for (const p of problems) process.stdout.write(`   !! ${p}\n`);
        for (const f of result.files.filter((f) => f.copied)) {
          process.stdout.write(`   -> ${path.join(outDir, f.path)} (${f.size} bytes)\n`);
        }
        process.stdout.write("\n");
      }
    } finally {
      host.close();
    }
    process.stdout.write(
      failures === 0
        ? `All four results match the reference values (${reference.command}).\n`
        : `${failures} example(s) did not match the reference values.\n`,
    );
    return failures === 0 ? 0 : 1;
  } catch (err) {
    return reportError(err);
  }
}
