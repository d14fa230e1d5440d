/**
 * The `corral` command line. Each command lives in its own file; this one parses flags,
 * opens the configuration, and maps every failure to one line and an exit code.
 */
import { Command, CommanderError, Option } from "commander";
import { type ConfigFlags, loadConfig } from "../core/config.js";
import { CorralError } from "../core/errors.js";
import { configCommand } from "./config.js";
import { demoCommand } from "./demo.js";
import { doctorCommand } from "./doctor.js";
import { type EventsFlags, eventsCommand } from "./events.js";
import { gcCommand } from "./gc.js";
import { imageBuildCommand, imageImportCommand, imageLsCommand, imageRmCommand } from "./image.js";
import { EXIT_CORRAL_ERROR, reportError, watchOutputPipes } from "./output.js";
import { type RunFlags, runCommandLine } from "./run.js";

function globalFlags(cmd: Command): ConfigFlags {
  const o = cmd.optsWithGlobals() as {
    dataDir?: string;
    imageDir?: string;
    runtime?: string;
    layerPool?: string;
  };
  return {
    ...(o.dataDir ? { dataDir: o.dataDir } : {}),
    ...(o.layerPool !== undefined ? { layerPool: o.layerPool } : {}),
    ...(o.imageDir ? { imageDir: o.imageDir } : {}),
    ...(o.runtime ? { runtime: o.runtime } : {}),
  };
}

export async function main(argv: string[]): Promise<number> {
  watchOutputPipes();
  let exitCode = 0;
  const program = new Command("corral")
    .description("Run untrusted code in ephemeral, locked-down sandboxes")
    .option("--data-dir <dir>", "where this instance keeps its state (env CORRAL_DATA_DIR)")
    .option("--image-dir <dir>", "the shared image cache (env CORRAL_IMAGE_DIR)")
    .option(
      "--layer-pool <n>",
      "pre-made disk layers kept ready, 0 disables (env CORRAL_LAYER_POOL, default 2)",
    )
    .addOption(
      new Option("--runtime <name>", "the OCI runtime binary (env CORRAL_RUNTIME)").hideHelp(),
    )
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({
      // Commander's own parse errors: one line, like every other error.
      outputError: (text) =>
        process.stderr.write(`corral: ${text.replace(/^error: /, "").trim()}\n`),
    });

  // What follows the first `--` is a program's argv (`corral run -- /bin/echo hi`), which
  // Commander hands over mixed with the other operands.
  const dash = argv.indexOf("--");
  const afterDash = dash < 0 ? null : argv.slice(dash + 1);
  const collect = (value: string, previous: string[]): string[] => [...previous, value];
  program
    .command("run")
    .description(
      "run code, a program (after --), or the image's Entrypoint and Cmd, in a fresh sandbox and destroy it",
    )
    .usage("[options] (--lang L (FILE | - | -c CODE) | -- PROGRAM [ARGS...] | [-- ARGS...])")
    .argument("[file]", "a file with the code ('-' reads standard input)")
    .argument(
      "[args...]",
      "after --: the program and its arguments, run with no shell (after the image's Entrypoint, replacing its Cmd)",
    )
    .option("--lang <language>", "python, r, shell or sql")
    .option("-c, --code <code>", "the code itself, instead of a file")
    .option("--image <name>", "image name, key or digest", "default")
    .option("-e, --env <NAME=VALUE>", "set an environment variable (repeatable)", collect, [])
    .option("-w, --workdir <dir>", "working directory (absolute, or relative to /work)")
    .option("-i, --interactive", "forward standard input to the program")
    .option(
      "--in <path[:dest]>",
      "copy a host file or directory to /work/<name> or DEST (repeatable)",
      collect,
      [],
    )
    .option("--db <file>", "bring a SQLite file in as /work/db.sqlite (used by --lang sql)")
    .option("--mem <size>", "memory limit (default 512m)")
    .option("--cpus <n>", "CPU limit in cores (default 1)")
    .option("--pids <n>", "process limit (default 256)")
    .option("--disk <size>", "writable layer size (default 1g)")
    .option("--inodes <n>", "writable layer inodes (default 100000)")
    .option("--open-files <n>", "open files limit (default 1024)")
    .option("--file-size <size>", "largest file a process may write (default: the disk limit)")
    .option("--timeout <duration>", "wall-time limit (default 30s)")
    .option("--output-cap <size>", "bytes kept per output stream (default 1m)")
    .option("--io-read-bps <rate>", "read bandwidth per second, e.g. 10m (default unlimited)")
    .option(
      "--io-write-bps <rate>",
      "write bandwidth per second; cgroup v1: O_DIRECT writes only (default unlimited)",
    )
    .option("--io-read-iops <n>", "read operations per second (default unlimited)")
    .option(
      "--io-write-iops <n>",
      "write operations per second; cgroup v1: O_DIRECT writes only (default unlimited)",
    )
    .option("--out <dir>", "copy files created or changed under /work here")
    .option("--json", "print one JSON result instead of streaming")
    .action(async (file: string | undefined, rest: string[], flags: RunFlags, cmd: Command) => {
      const operands = file === undefined ? [] : [file, ...rest];
      // `--` counts only if Commander took it as the end of options (not as a value).
      const isTail =
        afterDash !== null &&
        afterDash.length <= operands.length &&
        afterDash.every((a, i) => operands[operands.length - afterDash.length + i] === a);
      exitCode = await runCommandLine(
        loadConfig(globalFlags(cmd)),
        isTail ? operands.slice(0, operands.length - afterDash.length) : operands,
        isTail ? afterDash : null,
        flags,
      );
    });

  const image = program.command("image").description("build, import, list and remove images");
  image
    .command("build")
    .description("build an image from a recipe (default: the built-in recipe)")
    .argument("[recipe]", "a recipe YAML file")
    .option("--mirror <url>", "Debian mirror (default: the host's apt configuration)")
    .option("--json", "print the image as JSON")
    .action(
      async (
        recipe: string | undefined,
        flags: { mirror?: string; json?: boolean },
        cmd: Command,
      ) => {
        const config = loadConfig(globalFlags(cmd));
        exitCode = await imageBuildCommand({
          ...(recipe ? { recipe } : {}),
          ...(flags.mirror ? { mirror: flags.mirror } : {}),
          imageDir: config.imageDir,
          uidBase: config.ids.base,
          json: flags.json === true,
        });
      },
    );
  image
    .command("import")
    .description("import a root filesystem tarball, a docker save archive or an OCI archive")
    .argument("<file>", "the archive (.tar, or gzip-compressed)")
    .option(
      "--name <name>",
      "NAME or NAME:TAG (default: the archive's RepoTag or OCI reference, else the file's name)",
    )
    .option("--json", "print the image as JSON")
    .action(async (file: string, flags: { name?: string; json?: boolean }, cmd: Command) => {
      const config = loadConfig(globalFlags(cmd));
      exitCode = await imageImportCommand({
        file,
        ...(flags.name !== undefined ? { name: flags.name } : {}),
        imageDir: config.imageDir,
        uidBase: config.ids.base,
        json: flags.json === true,
      });
    });
  image
    .command("ls")
    .description("list built images")
    .option("--json", "print JSON")
    .action(async (flags: { json?: boolean }, cmd: Command) => {
      exitCode = await imageLsCommand({
        imageDir: loadConfig(globalFlags(cmd)).imageDir,
        json: flags.json === true,
      });
    });
  image
    .command("rm")
    .description(
      "remove an image name; the image goes with its last name, or when given its key or digest",
    )
    .argument("<image>", "name, key or digest prefix")
    .action(async (ref: string, _flags: unknown, cmd: Command) => {
      exitCode = await imageRmCommand({ imageDir: loadConfig(globalFlags(cmd)).imageDir, ref });
    });

  program
    .command("gc")
    .description("remove sandboxes whose owner died (containers, mounts, loop devices, cgroups)")
    .option("--dry-run", "only report what would be removed")
    .option("--json", "print JSON")
    .option(
      "--force",
      "no effect yet: set aside for server-owned sandboxes (there is no server yet); a sandbox is removed once its process is gone, with or without it",
    )
    .option("--pool", "also remove the ready entries of the layer pool")
    .action(async (flags: { dryRun?: boolean; json?: boolean; pool?: boolean }, cmd: Command) => {
      exitCode = await gcCommand(loadConfig(globalFlags(cmd)), flags);
    });

  program
    .command("events")
    .description("list the data directory's event log, or check its hash chain (--verify)")
    .option("--sandbox <id>", "only the events of this sandbox (sb-...)")
    .option(
      "--kind <kind>",
      "only this kind (exec, sandbox.create...) or family (sandbox, file...)",
    )
    .option("--limit <n>", "only the last N events (of those that match)")
    .option("--json", "print the events as JSON, with their hashes")
    .option("--verify", "recompute the hash chain: exit 0 when intact, 1 at the first bad event")
    .action(async (flags: EventsFlags, cmd: Command) => {
      exitCode = await eventsCommand(loadConfig(globalFlags(cmd)), flags);
    });

  program
    .command("doctor")
    .description("check the host and show what is enforced")
    .option("--json", "print JSON")
    .action(async (flags: { json?: boolean }, cmd: Command) => {
      exitCode = await doctorCommand(loadConfig(globalFlags(cmd)), flags);
    });

  program
    .command("demo")
    .description("run the real-data examples in sandboxes and check their numbers")
    .option("--yes", "install missing host packages and build the default image")
    .option("--out <dir>", "where the chart and other outputs land", "corral-demo-out")
    .action(async (flags: { yes?: boolean; out: string }, cmd: Command) => {
      exitCode = await demoCommand(loadConfig(globalFlags(cmd)), flags);
    });

  program
    .command("config")
    .description("print the configuration in force")
    .action(async (_flags: unknown, cmd: Command) => {
      exitCode = configCommand(loadConfig(globalFlags(cmd)));
    });

  try {
    await program.parseAsync(argv, { from: "user" });
    return exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version are not errors.
      if (
        err.code === "commander.helpDisplayed" ||
        err.code === "commander.version" ||
        err.code === "commander.help"
      ) {
        return 0;
      }
      return EXIT_CORRAL_ERROR;
    }
    if (err instanceof CorralError || err instanceof Error) return reportError(err);
    return reportError(err);
  }
}
