import { describe, expect, it } from "vitest";
import { CorralError } from "../../src/core/errors.js";
import { DEFAULT_LIMITS, MiB } from "../../src/core/limits.js";
import { chooseLayerKind, type SandboxSpec } from "../../src/core/sandbox.js";
import {
  buildOciSpec,
  diskMasks,
  MASKED_PATHS,
  READONLY_PATHS,
} from "../../src/sandbox/runtime/oci-spec.js";

const spec: SandboxSpec = {
  id: "sb-000000000001",
  image: {
    name: "default",
    digest: "sha256:x",
    rootfs: "/images/x/rootfs",
    env: { PATH: "/usr/bin:/bin", HOME: "/nope" },
  },
  limits: { ...DEFAULT_LIMITS, memoryBytes: 256 * MiB, cpus: 0.5, pids: 64 },
  ids: { base: 100_000_000, size: 65_536 },
  network: "none",
  hostname: "sandbox",
};
const input = {
  spec,
  rootfs: "/data/sandboxes/sb-000000000001/rootfs",
  supervisorHostPath: "/data/bin/corral-supervisor-abc",
  kernelsHostDir: "/data/bin/kernels-abc",
  cgroupsPath: "/corral-tag-sb-000000000001",
  swapAccounting: true,
};

describe("buildOciSpec", () => {
  const config = buildOciSpec(input);

  it("puts the sandbox in every namespace, the user namespace included", () => {
    expect(config.linux.namespaces.map((n) => n.type).sort()).toEqual(
      ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"].sort(),
    );
    // No namespace joins a path: every one is new.
    expect(config.linux.namespaces.every((n) => !("path" in n))).toBe(true);
  });

  it("maps root inside to the unprivileged range, uid and gid alike", () => {
    expect(config.linux.uidMappings).toEqual([
      { containerID: 0, hostID: 100_000_000, size: 65_536 },
    ]);
    expect(config.linux.gidMappings).toEqual([
      { containerID: 0, hostID: 100_000_000, size: 65_536 },
    ]);
  });

  it("grants no capability in any set and sets no_new_privileges", () => {
    for (const set of Object.values(config.process.capabilities)) expect(set).toEqual([]);
    expect(config.process.noNewPrivileges).toBe(true);
  });

  it("applies the cgroup limits, with no swap", () => {
    expect(config.linux.resources.memory).toEqual({
      limit: 256 * MiB,
      swap: 256 * MiB,
      disableOOMKiller: false,
    });
    expect(config.linux.resources.cpu).toEqual({ quota: 50_000, period: 100_000 });
    expect(config.linux.resources.pids).toEqual({ limit: 64 });
    expect(config.linux.resources.devices).toEqual([{ allow: false, access: "rwm" }]);
  });

  it("omits swap only where the host cannot account it", () => {
    expect(
      buildOciSpec({ ...input, swapAccounting: false }).linux.resources.memory.swap,
    ).toBeUndefined();
  });

  it("applies rlimits for open files, file size, core dumps, queued signals and mqueues", () => {
    expect(config.process.rlimits).toEqual([
      { type: "RLIMIT_NOFILE", hard: 1024, soft: 1024 },
      {
        type: "RLIMIT_FSIZE",
        hard: DEFAULT_LIMITS.fileSizeBytes,
        soft: DEFAULT_LIMITS.fileSizeBytes,
      },
      { type: "RLIMIT_CORE", hard: 0, soft: 0 },
      { type: "RLIMIT_SIGPENDING", hard: 1024, soft: 1024 },
      { type: "RLIMIT_MSGQUEUE", hard: 65536, soft: 65536 },
    ]);
  });

  it("masks and write-protects /proc as Docker does", () => {
    for (const p of ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"]) {
      expect(config.linux.maskedPaths).toContain(p);
    }
    expect(config.linux.readonlyPaths).toEqual([...READONLY_PATHS]);
    expect(config.linux.maskedPaths).toEqual([...MASKED_PATHS]);
  });

  it("mounts nothing without nosuid, and binds the supervisor read-only", () => {
    for (const m of config.mounts) expect(m.options, m.destination).toContain("nosuid");
    const sup = config.mounts.find((m) => m.destination === "/.corral/supervisor");
    expect(sup?.options).toEqual(["bind", "ro", "nosuid", "nodev"]);
    // The only host paths inside: the supervisor and the kernel drivers, both read-only.
    const binds = config.mounts.filter((m) => m.type === "bind");
    expect(binds.map((m) => m.destination)).toEqual(["/.corral/supervisor", "/.corral/kernels"]);
    for (const b of binds) expect(b.options).toContain("ro");
    expect(config.mounts.find((m) => m.destination === "/dev/shm")?.options).toContain(
      "size=67108864",
    );
    expect(config.mounts.find((m) => m.destination === "/sys")?.options).toContain("ro");
  });

  it("runs the supervisor as PID 1 with HOME=/root and LANG=C.UTF-8 overriding the image", () => {
    expect(config.process.args).toEqual(["/.corral/supervisor"]);
    expect(config.process.env).toContain("HOME=/root");
    expect(config.process.env).toContain("LANG=C.UTF-8");
    expect(config.process.env).not.toContain("HOME=/nope");
    expect(config.process.user).toEqual({ uid: 0, gid: 0, additionalGids: [0] });
  });

  it("has a seccomp allowlist", () => {
    expect(config.linux.seccomp?.defaultAction).toBe("SCMP_ACT_ERRNO");
  });

  it("weakens only through the test-only switches", () => {
    const noSeccomp = buildOciSpec({
      ...input,
      spec: { ...spec, testOnly: { dropSeccomp: true } },
    });
    expect(noSeccomp.linux.seccomp).toBeUndefined();
    const noUserns = buildOciSpec({
      ...input,
      spec: { ...spec, testOnly: { dropUserNamespace: true } },
    });
    expect(noUserns.linux.namespaces.map((n) => n.type)).not.toContain("user");
    expect(noUserns.linux.uidMappings).toBeUndefined();
  });
});

describe("buildOciSpec: block I/O", () => {
  const devices = [
    { major: 254, minor: 0 },
    { major: 7, minor: 3 },
  ];
  const withIo = (io: Partial<typeof spec.limits>) => ({
    ...input,
    spec: { ...spec, limits: { ...spec.limits, ...io } },
  });

  it("has no blockIO section without I/O limits, devices or not", () => {
    expect(buildOciSpec(input).linux.resources.blockIO).toBeUndefined();
    expect(
      buildOciSpec({ ...input, blockDevices: devices }).linux.resources.blockIO,
    ).toBeUndefined();
  });

  it("throttles each limited kind on every carrier device", () => {
    const config = buildOciSpec({
      ...withIo({ ioReadBps: 4 * MiB, ioWriteBps: 2 * MiB }),
      blockDevices: devices,
    });
    expect(config.linux.resources.blockIO).toEqual({
      throttleReadBpsDevice: [
        { major: 254, minor: 0, rate: 4 * MiB },
        { major: 7, minor: 3, rate: 4 * MiB },
      ],
      throttleWriteBpsDevice: [
        { major: 254, minor: 0, rate: 2 * MiB },
        { major: 7, minor: 3, rate: 2 * MiB },
      ],
    });
  });

  it("refuses an I/O limit with no device to apply it to (never silently void)", () => {
    expect(() => buildOciSpec(withIo({ ioReadIops: 100 }))).toThrow(
      /an I\/O limit was requested but no block device carrying the sandbox's I\/O was found/,
    );
    expect(() => buildOciSpec({ ...withIo({ ioReadIops: 100 }), blockDevices: [] })).toThrow(
      CorralError,
    );
  });
});

describe("chooseLayerKind", () => {
  it.each([
    [100 * MiB, 256 * MiB, "tmpfs"],
    [128 * MiB, 256 * MiB, "tmpfs"],
    [129 * MiB, 256 * MiB, "ext4-loop"],
    [1024 * MiB, 512 * MiB, "ext4-loop"],
  ])("disk %d with memory %d → %s", (diskBytes, memoryBytes, kind) => {
    expect(chooseLayerKind({ diskBytes, memoryBytes })).toBe(kind);
  });
});

describe("diskMasks", () => {
  it("masks the host's own disks in sysfs, and nothing that is not plainly one", () => {
    expect(
      diskMasks([
        "/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda",
        "/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda", // twice: once
        "/sys/devices/virtual/block/loop0", // masked whole already
        "/sys/devices/../etc", // not canonical
        "/etc/passwd", // not sysfs
        "/sys/devices/platform/x y", // a space
        "/sys/devices",
        "relative/block/sda",
      ]),
    ).toEqual(["/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda"]);
    const config = buildOciSpec({
      ...input,
      sysBlockTargets: ["/sys/devices/platform/sd/block/sda"],
    });
    expect(config.linux.maskedPaths).toEqual([
      ...MASKED_PATHS,
      "/sys/devices/platform/sd/block/sda",
    ]);
  });
});
