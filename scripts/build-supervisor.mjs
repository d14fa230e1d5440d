// Builds the in-sandbox supervisor: a small static C program (see docs/protocol.md).
// Static, so that it runs in any image, even one without a libc, a shell or Python.
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, renameSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const nativeDir = path.join(root, "src/supervisor/native");
// The in-sandbox init and its host modes (corral-supervisor.c), and the host-only layer
// mounts (layer-ops.c, with its header): one binary.
const inputs = ["corral-supervisor.c", "layer-ops.c", "layer-ops.h"].map((f) =>
  path.join(nativeDir, f),
);
const sources = inputs.filter((f) => f.endsWith(".c"));
const outDir = path.join(root, "dist/supervisor");
const out = path.join(outDir, "corral-supervisor");
const { version } = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8"));

// Skip when the binary is newer than its sources and package.json (npm ci, then npm test).
try {
  const built = statSync(out).mtimeMs;
  if ([...inputs, path.join(root, "package.json")].every((f) => built > statSync(f).mtimeMs)) {
    process.exit(0);
  }
} catch {
  // not built yet
}

mkdirSync(outDir, { recursive: true });
const tmp = `${out}.tmp-${process.pid}`;
const cc = process.env.CC ?? "gcc";
try {
  execFileSync(
    cc,
    [
      "-std=c11",
      "-static",
      "-O2",
      "-Wall",
      "-Wextra",
      "-Werror",
      `-DCORRAL_VERSION="${version}"`,
      "-o",
      tmp,
      ...sources,
    ],
    { stdio: "inherit" },
  );
} catch (err) {
  const reason =
    err.code === "ENOENT"
      ? `${cc} is not installed (apt-get install gcc libc6-dev)`
      : "compilation failed";
  console.error(`build-supervisor: ${reason}`);
  process.exit(1);
}
renameSync(tmp, out);
