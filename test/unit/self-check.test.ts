import { describe, expect, it } from "vitest";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import { decideSelfCheck, type SelfCheckInput } from "../../src/sandbox/self-check.js";

const ids = { base: 100_000_000, size: 65_536 };
const host: Record<string, string> = {
  "ns.user": "4026531837",
  "ns.pid": "4026531836",
  "ns.mnt": "4026531841",
  "ns.net": "4026531840",
  "ns.ipc": "4026531839",
  "ns.uts": "4026531838",
  "ns.cgroup": "4026531835",
};
const goodReport: Record<string, string> = {
  "ns.user": "4026532001",
  "ns.pid": "4026532002",
  "ns.mnt": "4026532003",
  "ns.net": "4026532004",
  "ns.ipc": "4026532005",
  "ns.uts": "4026532006",
  "ns.cgroup": "4026532007",
  uid_map: "0 100000000 65536",
  gid_map: "0 100000000 65536",
  pid: "1",
  seccomp: "2",
  seccomp_filters: "1",
  "cap.eff": "0000000000000000",
  "cap.prm": "0000000000000000",
  "cap.inh": "0000000000000000",
  "cap.bnd": "0000000000000000",
  "cap.amb": "0000000000000000",
  no_new_privs: "1",
  dumpable: "0",
  "rlimit.nofile": "1024/1024",
  "rlimit.fsize": `${DEFAULT_LIMITS.fileSizeBytes}/${DEFAULT_LIMITS.fileSizeBytes}`,
};
const goodCgroup = {
  memoryBytes: DEFAULT_LIMITS.memoryBytes,
  cpuQuotaUs: 100_000,
  cpuPeriodUs: 100_000,
  pids: 256,
};

function input(report: Record<string, string | undefined>, cgroup = goodCgroup): SelfCheckInput {
  return {
    report: Object.fromEntries(Object.entries(report).filter(([, v]) => v !== undefined)) as Record<
      string,
      string
    >,
    hostNamespaces: host,
    ids,
    limits: { ...DEFAULT_LIMITS },
    cgroup,
  };
}

describe("decideSelfCheck", () => {
  it("accepts a sandbox with every protection in force", () => {
    const d = decideSelfCheck(input(goodReport));
    expect(d.ok).toBe(true);
    expect(d.checks.every((c) => c.ok)).toBe(true);
  });

  it.each<[string, Record<string, string | undefined>, string]>([
    [
      "shared user namespace (weakened: no userns)",
      { "ns.user": host["ns.user"] },
      "namespace.user",
    ],
    ["shared pid namespace", { "ns.pid": host["ns.pid"] }, "namespace.pid"],
    ["shared network namespace", { "ns.net": host["ns.net"] }, "namespace.net"],
    ["shared mount namespace", { "ns.mnt": host["ns.mnt"] }, "namespace.mnt"],
    ["missing cgroup namespace", { "ns.cgroup": undefined }, "namespace.cgroup"],
    ["identity uid map (root is host root)", { uid_map: "0 0 4294967295" }, "uid_map"],
    ["extra gid map line", { gid_map: "0 100000000 65536;65536 0 1" }, "gid_map"],
    ["supervisor not pid 1", { pid: "7" }, "pid1"],
    ["seccomp off (weakened)", { seccomp: "0", seccomp_filters: "0" }, "seccomp"],
    ["seccomp strict mode but no filter", { seccomp: "2", seccomp_filters: "0" }, "seccomp"],
    ["an effective capability", { "cap.eff": "0000000000200000" }, "capabilities.eff"],
    ["a bounding capability", { "cap.bnd": "000001ffffffffff" }, "capabilities.bnd"],
    ["an ambient capability", { "cap.amb": "0000000000000400" }, "capabilities.amb"],
    ["garbage capability value", { "cap.prm": "zz" }, "capabilities.prm"],
    ["NoNewPrivs off", { no_new_privs: "0" }, "no_new_privs"],
    ["dumpable supervisor", { dumpable: "1" }, "not_dumpable"],
    ["open files limit not applied", { "rlimit.nofile": "20000/20000" }, "rlimit.nofile"],
    ["file size limit not applied", { "rlimit.fsize": "unlimited/unlimited" }, "rlimit.fsize"],
  ])("refuses: %s", (_name, change, failed) => {
    const d = decideSelfCheck(input({ ...goodReport, ...change }));
    expect(d.ok).toBe(false);
    if (!d.ok) expect(d.failed).toBe(failed);
  });

  it.each<[string, Partial<typeof goodCgroup>, string]>([
    ["memory limit missing", { memoryBytes: Number.POSITIVE_INFINITY }, "cgroup.memory"],
    ["cpu quota missing", { cpuQuotaUs: -1 }, "cgroup.cpu"],
    ["pids limit missing", { pids: Number.POSITIVE_INFINITY }, "cgroup.pids"],
  ])("refuses: %s", (_name, change, failed) => {
    const d = decideSelfCheck(input(goodReport, { ...goodCgroup, ...change }));
    expect(d.ok).toBe(false);
    if (!d.ok) expect(d.failed).toBe(failed);
  });

  it("refuses an empty report (a supervisor that said nothing)", () => {
    const d = decideSelfCheck(input({}));
    expect(d.ok).toBe(false);
  });

  describe("block I/O", () => {
    const limits = { ...DEFAULT_LIMITS, ioReadBps: 4 * 1024 * 1024 };
    const blockIo = {
      throttleReadBpsDevice: [
        { major: 254, minor: 0, rate: 4 * 1024 * 1024 },
        { major: 7, minor: 3, rate: 4 * 1024 * 1024 },
      ],
    };
    const seen = (rbps: Record<string, number>) => ({
      ...goodCgroup,
      io: { rbps, wbps: {}, riops: {}, wiops: {} },
    });
    const withIo = (cgroup: SelfCheckInput["cgroup"], plan: typeof blockIo | undefined) => ({
      ...input(goodReport, cgroup as typeof goodCgroup),
      limits,
      blockIo: plan,
    });

    it("accepts every planned throttle in force", () => {
      const d = decideSelfCheck(withIo(seen({ "254:0": 4194304, "7:3": 4194304 }), blockIo));
      expect(d.ok).toBe(true);
      expect(d.checks.find((c) => c.name === "cgroup.io")?.ok).toBe(true);
    });

    it.each<[string, Record<string, number>]>([
      ["the loop device unthrottled", { "254:0": 4194304 }],
      ["a throttle at another rate", { "254:0": 4194304, "7:3": 1048576 }],
      ["no throttle at all", {}],
    ])("refuses %s", (_name, rbps) => {
      const d = decideSelfCheck(withIo(seen(rbps), blockIo));
      expect(d.ok).toBe(false);
      if (!d.ok) expect(d.failed).toBe("cgroup.io");
    });

    it("refuses an I/O limit that was never planned", () => {
      const d = decideSelfCheck(withIo(seen({ "254:0": 4194304 }), undefined));
      expect(d.ok).toBe(false);
      if (!d.ok) expect(d.detail).toBe("rbps not planned (want 4194304)");
    });

    it("does not check I/O for a sandbox without I/O limits", () => {
      const d = decideSelfCheck(input(goodReport));
      expect(d.checks.some((c) => c.name === "cgroup.io")).toBe(false);
    });
  });
});
