import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  AF_ALG,
  AF_VSOCK,
  ALLOWED_SYSCALLS,
  buildSeccompProfile,
  CLONE_NEW_MASK,
  ENOSYS,
  EPERM,
  REFUSED_SYSCALLS,
} from "../../src/sandbox/runtime/seccomp.js";

const profile = buildSeccompProfile();
const rulesFor = (name: string) => profile.syscalls.filter((r) => r.names.includes(name));
const unconditionallyAllowed = new Set(
  profile.syscalls.filter((r) => r.action === "SCMP_ACT_ALLOW" && !r.args).flatMap((r) => r.names),
);

describe("seccomp profile (table test)", () => {
  it("is an allowlist: unknown syscalls get EPERM", () => {
    expect(profile.defaultAction).toBe("SCMP_ACT_ERRNO");
    expect(profile.defaultErrnoRet).toBe(EPERM);
  });

  it("names only the native architecture, so i386 and x32 calls are refused", () => {
    expect(profile.architectures).toEqual(["SCMP_ARCH_X86_64"]);
  });

  it("keeps the allowlist sorted and free of duplicates", () => {
    expect([...ALLOWED_SYSCALLS].sort()).toEqual(ALLOWED_SYSCALLS);
    expect(new Set(ALLOWED_SYSCALLS).size).toBe(ALLOWED_SYSCALLS.length);
  });

  it.each(REFUSED_SYSCALLS.map((s) => [s]))("never allows %s", (name) => {
    expect(rulesFor(name).filter((r) => r.action === "SCMP_ACT_ALLOW")).toEqual([]);
  });

  // pivot_root, fsopen, move_mount, acct, swapon/swapoff and reboot answer EPERM from
  // their own capability check on this kernel even without seccomp, so the call-by-call
  // matrix cannot tell the two apart: this table is their proof.
  it.each([
    ["pivot_root"],
    ["fsopen"],
    ["move_mount"],
    ["acct"],
    ["swapon"],
    ["swapoff"],
    ["reboot"],
  ])("refuses %s (covered here, not by the matrix)", (name) => {
    expect(REFUSED_SYSCALLS).toContain(name);
    expect(rulesFor(name)).toEqual([]);
  });

  it.each([
    "faccessat2",
    "close_range",
    "rseq",
    "statx",
    "openat2",
    "epoll_pwait2",
    "pidfd_open",
    "read",
    "write",
    "mmap",
    "execve",
    "wait4",
    "futex",
    "getrandom",
  ])("allows %s, which glibc and ordinary programs need", (name) => {
    expect(unconditionallyAllowed.has(name)).toBe(true);
  });

  it("allows every fcntl but F_SETLEASE (a lease can stall another process's execve)", () => {
    expect(rulesFor("fcntl")).toEqual([
      {
        names: ["fcntl"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: 1, value: 1024, op: "SCMP_CMP_NE" }],
      },
    ]);
  });

  it("answers clone3 with ENOSYS so glibc falls back to clone", () => {
    expect(rulesFor("clone3")).toEqual([
      { names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: ENOSYS },
    ]);
  });

  it("allows clone only with every CLONE_NEW* flag clear", () => {
    const rules = rulesFor("clone");
    expect(rules).toHaveLength(1);
    expect(rules[0]?.args).toEqual([
      { index: 0, value: CLONE_NEW_MASK, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ" },
    ]);
    // the mask is exactly the namespace flags of clone(2)
    const flags = [0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000];
    expect(flags.reduce((a, b) => a | b, 0)).toBe(CLONE_NEW_MASK);
  });

  it("allows socket only below AF_ALG, which also excludes AF_VSOCK", () => {
    expect(rulesFor("socket")).toEqual([
      {
        names: ["socket"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: 0, value: AF_ALG, op: "SCMP_CMP_LT" }],
      },
    ]);
    expect(AF_VSOCK).toBeGreaterThan(AF_ALG);
  });

  it("allows personality only for the harmless values", () => {
    const values = rulesFor("personality").map((r) => r.args?.[0]?.value);
    expect(values).toEqual([0, 8, 0x20000, 0x20008, 0xffffffff]);
  });

  it("has no rule that allows a refused syscall through a condition", () => {
    for (const rule of profile.syscalls) {
      for (const name of rule.names) {
        if (rule.action === "SCMP_ACT_ALLOW") expect(REFUSED_SYSCALLS).not.toContain(name);
      }
    }
  });
});

// runc resolves names with libseccomp and skips names it does not know: a typo would
// silently drop a rule. scmp_sys_resolver (Debian package `seccomp`, installed by .ci/run)
// is the same library's resolver.
const RESOLVER = "/usr/bin/scmp_sys_resolver";
describe.skipIf(!existsSync(RESOLVER))(
  "every syscall name is known to libseccomp on x86_64",
  () => {
    const names = [...new Set(profile.syscalls.flatMap((r) => r.names))];
    it.each(names.map((n) => [n]))("%s", (name) => {
      const nr = Number(
        execFileSync(RESOLVER, ["-a", "x86_64", name], { encoding: "utf8" }).trim(),
      );
      expect(nr).toBeGreaterThanOrEqual(0);
    });
  },
);
