/**
 * planReapedRemoval: which cgroups the host removes itself for a container whose
 * processes are all reaped, read from runc's state.json, and every record it refuses
 * (then `runc delete` runs instead).
 */
import { describe, expect, it } from "vitest";
import { planReapedRemoval } from "../../src/sandbox/runtime/runc.js";

const ROOT = "/sys/fs/cgroup";
const ID = "sb-0123456789ab";
const NAME = "corral-abcdef0123-sb-0123456789ab";

function v1(name = NAME): Record<string, string> {
  return {
    memory: `${ROOT}/memory/${name}`,
    cpu: `${ROOT}/cpu,cpuacct/${name}`,
    cpuacct: `${ROOT}/cpu,cpuacct/${name}`,
    pids: `${ROOT}/pids/${name}`,
    "name=systemd": `${ROOT}/systemd/${name}`,
  };
}

describe("planReapedRemoval", () => {
  it("takes runc's v1 record: one directory per hierarchy, shared ones once", () => {
    const plan = planReapedRemoval({ id: ID, cgroup_paths: v1() }, ID, ROOT, NAME);
    expect(plan).toEqual({
      cgroupDirs: [
        `${ROOT}/cpu,cpuacct/${NAME}`,
        `${ROOT}/memory/${NAME}`,
        `${ROOT}/pids/${NAME}`,
        `${ROOT}/systemd/${NAME}`,
      ],
    });
  });

  it("takes runc's v2 record: the one unified directory", () => {
    const plan = planReapedRemoval(
      { id: ID, cgroup_paths: { "": `${ROOT}/${NAME}` } },
      ID,
      ROOT,
      NAME,
    );
    expect(plan).toEqual({ cgroupDirs: [`${ROOT}/${NAME}`] });
  });

  it("refuses what is not a record of this container", () => {
    for (const state of [null, 7, "x", [], {}, { id: "sb-other", cgroup_paths: v1() }]) {
      expect(planReapedRemoval(state, ID, ROOT, NAME)).toBeNull();
    }
    // No cgroups recorded: runc itself knows better.
    expect(planReapedRemoval({ id: ID }, ID, ROOT, NAME)).toBeNull();
    expect(planReapedRemoval({ id: ID, cgroup_paths: {} }, ID, ROOT, NAME)).toBeNull();
    expect(planReapedRemoval({ id: ID, cgroup_paths: [] }, ID, ROOT, NAME)).toBeNull();
    expect(planReapedRemoval({ id: ID, cgroup_paths: null }, ID, ROOT, NAME)).toBeNull();
  });

  it("refuses any directory that is not ours, below the cgroup root", () => {
    const bad = [
      `/etc/${NAME}`, // outside the root
      `${ROOT}`, // the root itself
      `${ROOT}/`,
      `${ROOT}/memory`, // a whole hierarchy
      `${ROOT}/memory/other-cgroup`, // someone else's
      `${ROOT}/memory/${NAME}/child`, // deeper than runc puts it
      `${ROOT}/memory/../../etc/${NAME}`, // not canonical
      `${ROOT}/memory/./${NAME}`,
      `${ROOT}//${NAME}`,
      `${ROOT}/memory/${NAME}/`,
      `/sys/fs/cgroupx/memory/${NAME}`, // a sibling of the root
      `relative/${NAME}`,
    ];
    for (const dir of bad) {
      const paths = { ...v1(), pids: dir };
      expect(planReapedRemoval({ id: ID, cgroup_paths: paths }, ID, ROOT, NAME), dir).toBeNull();
    }
    // Not a string at all.
    expect(
      planReapedRemoval({ id: ID, cgroup_paths: { ...v1(), pids: 3 } }, ID, ROOT, NAME),
    ).toBeNull();
    // Every directory consistent, but under another name than the one Corral gave.
    expect(
      planReapedRemoval({ id: ID, cgroup_paths: v1("corral-other") }, ID, ROOT, NAME),
    ).toBeNull();
  });
});
