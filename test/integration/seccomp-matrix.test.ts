/**
 * The seccomp profile, call by call: a static program (test/fixtures/syscall-matrix.c)
 * makes one syscall per row with arguments that make it fail harmlessly, in two sandboxes
 * identical but for seccomp. A refused row proves the filter only where the two answers
 * differ: the unfiltered sandbox shows what the kernel itself would have said (EBADF,
 * EFAULT, EINVAL, ENOSYS...), the normal one shows EPERM from the profile.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { constants } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import { REFUSED_SYSCALLS } from "../../src/sandbox/runtime/seccomp.js";
import { Sandbox } from "../../src/sandbox/sandbox.js";
import { ROOT, type TestEnv, testEnv } from "../helpers/sandbox.js";

const FIXTURE = path.join(ROOT, "test/fixtures/syscall-matrix.c");

/** Refused by the profile but answered ENOSYS: clone3 on purpose (glibc then uses clone),
 * the others because they are newer than the profile's highest named syscall, for which
 * runc answers ENOSYS so that programs fall back to an older call. */
const ENOSYS_ROWS = ["clone3", "fchmodat2", "mseal"];

/** Foreign-architecture entries: only SCMP_ARCH_X86_64 is listed, and runc leaves
 * libseccomp's bad-architecture action at its default, which kills the caller. */
const KILLED_ROWS = ["x32_getpid", "i386_getpid"];

/**
 * Refused rows whose answer is EPERM with or without seccomp on this kernel: the kernel
 * checks a capability before it looks at any argument, so no choice of arguments makes
 * the unfiltered call say anything else. The matrix cannot prove the filter for them;
 * the table test (test/unit/seccomp.test.ts: every REFUSED_SYSCALLS entry is never
 * allowed, and the default action is EPERM) does.
 */
const SAME_EITHER_WAY: Record<string, string> = {
  pivot_root: "may_mount() first",
  fsopen: "CAP_SYS_ADMIN in the mount namespace's owner first",
  fsmount: "may_mount() first",
  fspick: "may_mount() first",
  move_mount: "may_mount() first",
  acct: "CAP_SYS_PACCT first",
  swapon: "CAP_SYS_ADMIN first",
  swapoff: "CAP_SYS_ADMIN first",
  reboot: "CAP_SYS_BOOT first, before the magic numbers",
  vhangup: "CAP_SYS_TTY_CONFIG is its only check; it takes no arguments",
  sethostname: "CAP_SYS_ADMIN first, before the length",
  setdomainname: "CAP_SYS_ADMIN first, before the length",
};
// syslog checks dmesg_restrict (a global sysctl) before its arguments: with it set every
// action needs CAP_SYSLOG; without it, reading into NULL is EINVAL and the row proves.
const dmesgRestricted = readFileSync("/proc/sys/kernel/dmesg_restrict", "utf8").trim() !== "0";
if (dmesgRestricted) SAME_EITHER_WAY.syslog = "kernel.dmesg_restrict=1: CAP_SYSLOG first";

/** Rows beyond REFUSED_SYSCALLS that the profile refuses. */
const EXTRA_REFUSED_ROWS = [
  "clone_newns", // clone is allowed only with every CLONE_NEW* bit clear
  "clone_newuser",
  "clone_newnet",
  "clone_newpid",
  "socket_alg", // socket families >= AF_ALG
  "socket_vsock",
  "personality_read_implies_exec", // personality values outside Docker's list
  ...ENOSYS_ROWS,
  ...KILLED_ROWS,
];
const REFUSED_ROWS = [...REFUSED_SYSCALLS, ...EXTRA_REFUSED_ROWS];

/** Rows that must pass the filter: what glibc and ordinary programs need. */
const ALLOWED_ROWS = [
  "getpid",
  "faccessat2",
  "close_range",
  "rseq",
  "statx",
  "openat2",
  "epoll_pwait2",
  "pidfd_open",
  "socket_unix",
  "socket_inet",
  "socket_netlink",
  "fork",
  "clone",
  // The clone_new* rows' control: the same rejected flag combination with no CLONE_NEW*
  // bit passes the filter and gets the kernel's EINVAL either way.
  "clone_sighand_novm",
  "personality_query",
  "personality_linux",
];

const errnoNames = new Map(Object.entries(constants.errno).map(([name, n]) => [n, name]));
const signalNames = new Map(Object.entries(constants.signals).map(([name, n]) => [n, name]));

/** "ok", an errno name, or a signal name. */
function symbolic(answer: string): string {
  const sig = /^sig(\d+)$/.exec(answer);
  if (sig) return signalNames.get(Number(sig[1])) ?? answer;
  if (answer === "0") return "ok";
  return /^\d+$/.test(answer) ? (errnoNames.get(Number(answer)) ?? `errno ${answer}`) : answer;
}

function parseTable(stdout: string): Map<string, string> {
  const lines = stdout.trimEnd().split("\n");
  if (lines.at(-1) !== "end") throw new Error(`the matrix did not finish:\n${stdout}`);
  const table = new Map<string, string>();
  for (const line of lines.slice(0, -1)) {
    const [name, answer, ...rest] = line.split(" ");
    if (!name || answer === undefined || rest.length > 0)
      throw new Error(`bad matrix line: ${line}`);
    table.set(name, symbolic(answer));
  }
  return table;
}

let env: TestEnv;
const sandboxes: Sandbox[] = [];
let filtered = new Map<string, string>();
let unfiltered = new Map<string, string>();

async function runMatrix(sandbox: Sandbox, binary: Buffer): Promise<Map<string, string>> {
  await sandbox.writeFile("/work/matrix", binary, 0o755);
  const r = await sandbox.exec({
    argv: ["/work/matrix"],
    timeoutMs: 30_000,
    outputCapBytes: 1 << 20,
  });
  const stderr = r.stderr.bytes().toString();
  if (r.exitCode !== 0 || r.killed) {
    throw new Error(`the matrix failed (exit ${r.exitCode}, killed ${r.killed}): ${stderr}`);
  }
  return parseTable(r.stdout.bytes().toString());
}

beforeAll(async () => {
  env = await testEnv("seccomp-matrix");
  const binary = path.join(env.config.dataDir, "syscall-matrix");
  try {
    execFileSync("gcc", ["--version"], { stdio: "ignore" });
  } catch {
    throw new Error(
      "gcc is needed to build test/fixtures/syscall-matrix.c (apt-get install gcc libc6-dev)",
    );
  }
  try {
    execFileSync("gcc", ["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", binary, FIXTURE], {
      stdio: ["ignore", "pipe", "pipe"],
    });
  } catch (err) {
    const e = err as { stderr?: Buffer };
    throw new Error(`gcc could not build ${FIXTURE}:\n${e.stderr?.toString() ?? String(err)}`);
  }
  const bytes = readFileSync(binary);
  const normal = await Sandbox.create(env.host, {
    image: env.image,
    limits: { ...DEFAULT_LIMITS },
  });
  sandboxes.push(normal);
  const noSeccomp = await Sandbox.create(env.host, {
    image: env.image,
    limits: { ...DEFAULT_LIMITS },
    testOnly: { dropSeccomp: true, ignoreSelfCheck: true },
  });
  sandboxes.push(noSeccomp);
  filtered = await runMatrix(normal, bytes);
  unfiltered = await runMatrix(noSeccomp, bytes);
});

afterAll(async () => {
  const failures: unknown[] = [];
  for (const sandbox of sandboxes) {
    await sandbox.destroy().catch((err: unknown) => failures.push(err));
  }
  env?.close();
  if (failures.length > 0) throw failures[0];
});

describe("seccomp, call by call (with and without the profile)", () => {
  it("runs every row of the fixture in both sandboxes, and no other", () => {
    const expected = [...REFUSED_ROWS, ...ALLOWED_ROWS].sort();
    expect([...filtered.keys()].sort()).toEqual(expected);
    expect([...unfiltered.keys()].sort()).toEqual(expected);
  });

  it.each(REFUSED_ROWS.filter((r) => !ENOSYS_ROWS.includes(r) && !KILLED_ROWS.includes(r)))(
    "refuses %s with EPERM",
    (row) => {
      expect(filtered.get(row)).toBe("EPERM");
    },
  );

  it.each(ENOSYS_ROWS)("answers %s with ENOSYS", (row) => {
    expect(filtered.get(row)).toBe("ENOSYS");
  });

  it.each(KILLED_ROWS)("kills the caller of %s (foreign architecture)", (row) => {
    expect(filtered.get(row)).toBe("SIGSYS");
  });

  it.each(REFUSED_ROWS.filter((r) => !(r in SAME_EITHER_WAY)))(
    "%s: the refusal is the profile's (the kernel alone answers otherwise)",
    (row) => {
      expect(unfiltered.get(row)).toBeDefined();
      expect(unfiltered.get(row)).not.toBe(filtered.get(row));
    },
  );

  it.each(Object.entries(SAME_EITHER_WAY))(
    "%s: EPERM either way (%s), so the table test covers it",
    (row) => {
      expect(filtered.get(row)).toBe("EPERM");
      expect(unfiltered.get(row)).toBe("EPERM");
    },
  );

  it("makes clone's EINVAL the kernel's: the control row without CLONE_NEW* gets it either way", () => {
    expect(filtered.get("clone_sighand_novm")).toBe("EINVAL");
    expect(unfiltered.get("clone_sighand_novm")).toBe("EINVAL");
  });

  it.each(ALLOWED_ROWS)("allows %s: same answer as without seccomp, never EPERM", (row) => {
    const answer = filtered.get(row);
    expect(answer).toBeDefined();
    expect(answer).toBe(unfiltered.get(row));
    expect(answer).not.toBe("EPERM");
    expect(answer).not.toMatch(/^SIG/);
  });
});
