import { describe, expect, it } from "vitest";
import { DEFAULT_LIMITS, MiB } from "../../src/core/limits.js";
import {
  decideHostLines,
  describeLayerMounts,
  type HostFacts,
} from "../../src/sandbox/doctor-checks.js";
import {
  assessRuncCves,
  compareVersions,
  hasUpstreamFix,
  parseRuncVersion,
} from "../../src/sandbox/runtime/runc-cves.js";

const DEBIAN_RUNC = `runc version 1.1.5+ds1
commit: 1.1.5+ds1-1+deb12u1
spec: 1.0.2-dev
go: go1.19.8
libseccomp: 2.5.4
`;
const upstream = (v: string) => `runc version ${v}\ncommit: v${v}-0-gabcdef\nspec: 1.2.0\n`;

describe("runc versions", () => {
  it("reads Debian's package version from the commit line", () => {
    expect(parseRuncVersion(DEBIAN_RUNC)).toEqual({
      upstream: "1.1.5",
      debian: { package: "1.1.5+ds1-1+deb12u1", upstream: "1.1.5", update: 1 },
    });
    expect(parseRuncVersion(upstream("1.3.3"))).toEqual({ upstream: "1.3.3", debian: null });
    expect(parseRuncVersion(upstream("1.4.0-rc.3"))?.upstream).toBe("1.4.0-rc.3");
    expect(parseRuncVersion("crun version 1.8")).toBeNull();
  });

  it.each<[string, string, number]>([
    ["1.1.5", "1.1.12", -1],
    ["1.1.12", "1.1.5", 1],
    ["1.0.0-rc6", "1.0.0-rc95", -1], // numbers within a pre-release compare as numbers
    ["1.0.0", "1.0.0-rc95", 1], // a release sorts after its release candidates
    ["1.4.0-rc.2", "1.4.0-rc.3", -1],
    ["1.2.8", "1.2.8", 0],
    ["1.10.0", "1.9.9", 1],
  ])("%s vs %s", (a, b, sign) => {
    expect(Math.sign(compareVersions(a, b))).toBe(sign);
  });

  const trio = ["1.2.8", "1.3.3", "1.4.0-rc.3"];
  it.each<[string, boolean]>([
    ["1.1.5", false], // 1.1 was never fixed
    ["1.1.99", false],
    ["1.2.7", false],
    ["1.2.8", true],
    ["1.3.2", false],
    ["1.3.3", true],
    ["1.4.0-rc.2", false],
    ["1.4.0-rc.3", true],
    ["1.4.0", true],
    ["1.5.1", true],
  ])("the 2025 fixes: %s fixed=%s", (v, fixed) => {
    expect(hasUpstreamFix(v, trio)).toBe(fixed);
  });
});

describe("assessRuncCves", () => {
  const status = (text: string, userns = true) =>
    Object.fromEntries(
      assessRuncCves(parseRuncVersion(text)!, userns).map((a) => [a.cve.id, a.status]),
    );

  it("Debian's 1.1.5: 2024 backported, 2025 open but mitigated by user namespaces", () => {
    expect(status(DEBIAN_RUNC)).toEqual({
      "CVE-2019-5736": "fixed",
      "CVE-2021-30465": "fixed",
      "CVE-2024-21626": "backported",
      "CVE-2025-31133": "mitigated",
      "CVE-2025-52565": "mitigated",
      "CVE-2025-52881": "mitigated",
    });
  });

  it("without user namespaces, the 2025 CVEs are open", () => {
    expect(status(DEBIAN_RUNC, false)["CVE-2025-52881"]).toBe("open");
  });

  it("an upstream 1.1.5 (no backport) is open to CVE-2024-21626", () => {
    expect(status(upstream("1.1.5"))["CVE-2024-21626"]).toBe("open");
  });

  it("Debian's 1.1.5 before the security update is open to it too", () => {
    expect(status("runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1\n")["CVE-2024-21626"]).toBe("open");
  });

  it("1.3.3 has every fix", () => {
    expect(new Set(Object.values(status(upstream("1.3.3"))))).toEqual(new Set(["fixed"]));
  });

  it("a very old runc is open to the runc-binary overwrite, mitigated by user namespaces", () => {
    expect(status(upstream("1.0.0-rc5"))).toMatchObject({
      "CVE-2019-5736": "mitigated",
      "CVE-2021-30465": "open",
    });
  });
});

const facts: HostFacts = {
  uid: 0,
  kernel: { release: "6.18.44", arch: "x64" },
  runtime: { name: "runc", path: "/usr/sbin/runc", versionText: DEBIAN_RUNC },
  cgroup: {
    version: 1,
    controllers: ["cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer", "pids"],
    swapAccounting: true,
    ioThrottle: true,
  },
  maxUserNamespaces: 96369,
  seccomp: true,
  seccompFilter: true,
  refusedSyscalls: 65,
  loop: { losetup: true, loopControl: true },
  mkfsExt4: true,
  debootstrap: true,
  hardLimits: { nofile: 20000, fsize: Number.POSITIVE_INFINITY },
  defaults: { ...DEFAULT_LIMITS },
  image: { ok: true, digest: "sha256:03aad4b8895878eba70", dir: "/var/lib/corral/images" },
  imageDevice: { kind: "block", device: { major: 254, minor: 0 } },
  dataDevice: { kind: "block", device: { major: 254, minor: 0 } },
  pool: {
    perShape: 2,
    shapes: [{ diskBytes: DEFAULT_LIMITS.diskBytes, inodes: DEFAULT_LIMITS.inodes }],
    ready: 2,
    dir: "/var/lib/corral/pool",
  },
  warmPools: [],
};

const line = (f: HostFacts, name: string) => decideHostLines(f).find((l) => l.name === name);

describe("decideHostLines", () => {
  it("this host (Debian runc, cgroup v1): every line ok but the 2025 CVEs and I/O, degraded", () => {
    const lines = decideHostLines(facts);
    expect(lines.filter((l) => l.status === "missing")).toEqual([]);
    expect(lines.filter((l) => l.status === "degraded").map((l) => l.name)).toEqual([
      "runc CVE-2025-31133",
      "runc CVE-2025-52565",
      "runc CVE-2025-52881",
      "I/O limits",
    ]);
    expect(lines.map((l) => l.name)).toEqual([
      "root",
      "kernel",
      "runtime",
      "runc CVE-2019-5736",
      "runc CVE-2021-30465",
      "runc CVE-2024-21626",
      "runc CVE-2025-31133",
      "runc CVE-2025-52565",
      "runc CVE-2025-52881",
      "cgroups",
      "memory.swap",
      "user namespaces",
      "seccomp",
      "loop devices",
      "disk limit",
      "I/O limits",
      "image cache",
      "layer pool",
      "warm pool",
      "rlimits",
      "debootstrap",
      "network",
    ]);
  });

  it("an ok line carries no fix; every other line does", () => {
    for (const l of decideHostLines({ ...facts, uid: 1000, maxUserNamespaces: 0 })) {
      if (l.status === "ok") expect(l.fix, l.name).toBeUndefined();
      else expect(l.fix, l.name).toMatch(/\S/);
    }
  });

  it("names the runtime with its Debian package, and the backport", () => {
    expect(line(facts, "runtime")?.detail).toBe(
      "runc 1.1.5 (Debian 1.1.5+ds1-1+deb12u1) at /usr/sbin/runc",
    );
    expect(line(facts, "runc CVE-2024-21626")?.detail).toBe(
      "fixed by Debian's backport in 1.1.5+ds1-1+deb12u1 (upstream fixed in 1.1.12)",
    );
    expect(line(facts, "runc CVE-2025-52881")?.detail).toMatch(/user namespaces are mandatory/);
  });

  it.each<[string, Partial<HostFacts>, string, RegExp]>([
    ["not root", { uid: 1000 }, "root", /sudo/],
    [
      "no runc",
      { runtime: { name: "runc", path: null, versionText: null } },
      "runtime",
      /apt-get install runc/,
    ],
    ["user namespaces off", { maxUserNamespaces: 0 }, "user namespaces", /max_user_namespaces/],
    ["no seccomp", { seccomp: false }, "seccomp", /CONFIG_SECCOMP_FILTER/],
    [
      "no losetup",
      { loop: { losetup: false, loopControl: true } },
      "loop devices",
      /apt-get install mount/,
    ],
    [
      "no loop module",
      { loop: { losetup: true, loopControl: false } },
      "loop devices",
      /modprobe loop/,
    ],
    ["no mkfs.ext4", { mkfsExt4: false }, "disk limit", /e2fsprogs/],
    ["not x86_64", { kernel: { release: "6.1.0", arch: "arm64" } }, "kernel", /x86_64/],
    [
      "no image",
      { image: { ok: false, message: "image default is not built", hint: "corral image build" } },
      "image cache",
      /corral image build/,
    ],
    [
      "no pids controller",
      { cgroup: { ...facts.cgroup, controllers: ["memory", "cpu", "cpuacct"] } },
      "cgroups",
      /pids/,
    ],
    [
      "no blkio throttle",
      { cgroup: { ...facts.cgroup, ioThrottle: false } },
      "I/O limits",
      /blkio/,
    ],
    [
      "image cache on overlayfs",
      { imageDevice: { kind: "unthrottleable", reason: "on overlayfs" } },
      "I/O limits",
      /ext4 or xfs/,
    ],
    [
      "without user namespaces the 2025 CVEs are open",
      { maxUserNamespaces: 0 },
      "runc CVE-2025-31133",
      /upgrade runc \(fixed in 1\.2\.8, 1\.3\.3, 1\.4\.0-rc\.3\)/,
    ],
    [
      "an upstream 1.1.5",
      { runtime: { name: "runc", path: "/usr/bin/runc", versionText: upstream("1.1.5") } },
      "runc CVE-2024-21626",
      /1\.1\.12/,
    ],
  ])("missing: %s", (_name, change, name, fix) => {
    const l = line({ ...facts, ...change }, name);
    expect(l?.status).toBe("missing");
    expect(l?.fix).toMatch(fix);
  });

  it.each<[string, Partial<HostFacts>, string, RegExp]>([
    [
      "swap not accounted",
      { cgroup: { ...facts.cgroup, swapAccounting: false } },
      "memory.swap",
      /swapaccount=1/,
    ],
    ["pool off", { pool: { ...facts.pool, perShape: 0 } }, "layer pool", /--layer-pool 2/],
    ["an old kernel", { kernel: { release: "4.19.0", arch: "x64" } }, "kernel", /5\.x/],
    [
      "no debootstrap but an image",
      { debootstrap: false },
      "debootstrap",
      /apt-get install debootstrap/,
    ],
    [
      "a low open-files hard limit",
      { hardLimits: { nofile: 512, fsize: Number.POSITIVE_INFINITY } },
      "rlimits",
      /--open-files/,
    ],
    [
      "an unknown runc version",
      { runtime: { name: "runc", path: "/x/runc", versionText: "runc 9" } },
      "runtime",
      /1\.3\.3/,
    ],
  ])("degraded: %s", (_name, change, name, fix) => {
    const l = line({ ...facts, ...change }, name);
    expect(l?.status).toBe("degraded");
    expect(l?.fix).toMatch(fix);
  });

  it("cgroup v2 with io and memory: I/O limits ok, buffered writes included", () => {
    const l = line(
      {
        ...facts,
        cgroup: {
          version: 2,
          controllers: ["cpu", "io", "memory", "pids"],
          swapAccounting: true,
          ioThrottle: true,
        },
      },
      "I/O limits",
    );
    expect(l?.status).toBe("ok");
    expect(l?.detail).toMatch(/buffered writes included/);
  });

  it("says which layer the default disk gets, and counts the pool", () => {
    expect(line(facts, "disk limit")?.detail).toMatch(
      /^loop-backed ext4 for the default 1 GiB disk/,
    );
    expect(
      line({ ...facts, defaults: { ...DEFAULT_LIMITS, memoryBytes: 4096 * MiB } }, "disk limit")
        ?.detail,
    ).toMatch(/^tmpfs for the default 1 GiB disk/);
    expect(line(facts, "layer pool")?.detail).toMatch(/^2 of 2 ready \(1 GiB\/100000 inodes\)/);
  });

  it("shows the warm pools of live processes, and says when there are none", () => {
    expect(line(facts, "warm pool")?.detail).toMatch(/^none running/);
    const pool = {
      key: "abc",
      pid: 42,
      alive: true,
      size: 4,
      ready: 3,
      handedOut: 7,
      misses: 1,
      failures: 0,
      lastError: null,
    };
    const withPool = { ...facts, warmPools: [pool, { ...pool, key: "dead", alive: false }] };
    const lines = decideHostLines(withPool).filter((l) => l.name.startsWith("warm pool"));
    expect(lines).toEqual([
      {
        status: "ok",
        name: "warm pool abc",
        detail: "3 of 4 ready (pid 42); 7 handed out, 1 misses",
      },
    ]);
    const failing = {
      ...facts,
      warmPools: [{ ...pool, ready: 0, failures: 3, lastError: "boom" }],
    };
    expect(line(failing, "warm pool abc")).toMatchObject({
      status: "degraded",
      detail: expect.stringMatching(/3 failed creations \(last: boom\)/),
    });
  });
});

describe("describeLayerMounts", () => {
  it("ok when the supervisor's layer modes served the probe, resident or one-shot", () => {
    expect(describeLayerMounts(null, true)).toEqual({
      status: "ok",
      name: "layer mounts",
      detail: expect.stringContaining("by a resident corral-supervisor layer-serve"),
    });
    expect(describeLayerMounts(null, false).detail).toContain(
      "one corral-supervisor process each way",
    );
  });

  it("degraded, with the reason and a fix, when mount(8) took over", () => {
    const l = describeLayerMounts(
      "corral-supervisor: layer-up: /dev/loop-control: No such file",
      false,
    );
    expect(l.status).toBe("degraded");
    expect(l.detail).toBe(
      "mount(8) and umount(8), a process per mount (slower): corral-supervisor: layer-up: /dev/loop-control: No such file",
    );
    expect(l.fix).toContain("openat2");
  });
});
