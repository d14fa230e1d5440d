/**
 * The runtime self-check: one pure function decides whether a started sandbox may be
 * handed out, from what its supervisor reports from inside and what the host reads from
 * the sandbox's cgroup. Each check has a name; the first failure names the refusal.
 * A requested protection that is not in force is a refusal, never a warning.
 */
import { hasIoLimits, IO_LIMIT_KEYS, type Limits } from "../core/limits.js";
import type { IdRange } from "../core/sandbox.js";
import {
  emptyIoThrottleSeen,
  missingThrottles,
  type OciBlockIo,
  THROTTLES,
} from "./runtime/block-io.js";
import type { CgroupLimitsSeen } from "./runtime/cgroups.js";

export interface SelfCheckInput {
  /** The supervisor's PROBE report (key=value). */
  report: Record<string, string>;
  /** The host's own namespace inode numbers, keyed like the report (`ns.user`, ...). */
  hostNamespaces: Record<string, string>;
  ids: IdRange;
  limits: Limits;
  cgroup: CgroupLimitsSeen;
  /** The block I/O throttles the sandbox was planned with (config.json), if any. */
  blockIo?: OciBlockIo | undefined;
}

export interface CheckOutcome {
  name: string;
  ok: boolean;
  detail: string;
}

export type SelfCheckDecision =
  | { ok: true; checks: CheckOutcome[] }
  | { ok: false; failed: string; detail: string; checks: CheckOutcome[] };

export const NAMESPACES = ["user", "pid", "mnt", "net", "ipc", "uts", "cgroup"] as const;

function isZeroHex(v: string | undefined): boolean {
  return v !== undefined && /^[0-9a-fA-F]+$/.test(v) && /^0+$/.test(v);
}

export function decideSelfCheck(input: SelfCheckInput): SelfCheckDecision {
  const r = input.report;
  const checks: CheckOutcome[] = [];
  const check = (name: string, ok: boolean, detail: string) => checks.push({ name, ok, detail });

  for (const ns of NAMESPACES) {
    const inside = r[`ns.${ns}`];
    const host = input.hostNamespaces[`ns.${ns}`];
    check(
      `namespace.${ns}`,
      inside !== undefined && host !== undefined && inside !== host,
      `inside ${inside ?? "?"}, host ${host ?? "?"}`,
    );
  }
  // Root inside must be the unprivileged range and nothing else: one line, exact.
  const wantMap = `0 ${input.ids.base} ${input.ids.size}`;
  check("uid_map", r.uid_map === wantMap, `${r.uid_map ?? "?"} (want ${wantMap})`);
  check("gid_map", r.gid_map === wantMap, `${r.gid_map ?? "?"} (want ${wantMap})`);
  check("pid1", r.pid === "1", `supervisor pid ${r.pid ?? "?"}`);
  check(
    "seccomp",
    r.seccomp === "2" && Number(r.seccomp_filters ?? "0") >= 1,
    `mode ${r.seccomp ?? "?"}, filters ${r.seccomp_filters ?? "?"}`,
  );
  for (const set of ["eff", "prm", "inh", "bnd", "amb"]) {
    check(
      `capabilities.${set}`,
      isZeroHex(r[`cap.${set}`]),
      `cap.${set}=${r[`cap.${set}`] ?? "?"}`,
    );
  }
  check("no_new_privs", r.no_new_privs === "1", `NoNewPrivs=${r.no_new_privs ?? "?"}`);
  check("not_dumpable", r.dumpable === "0", `dumpable=${r.dumpable ?? "?"}`);
  const nofile = `${input.limits.openFiles}/${input.limits.openFiles}`;
  check(
    "rlimit.nofile",
    r["rlimit.nofile"] === nofile,
    `${r["rlimit.nofile"] ?? "?"} (want ${nofile})`,
  );
  const fsize = `${input.limits.fileSizeBytes}/${input.limits.fileSizeBytes}`;
  check("rlimit.fsize", r["rlimit.fsize"] === fsize, `${r["rlimit.fsize"] ?? "?"} (want ${fsize})`);

  const cg = input.cgroup;
  check(
    "cgroup.memory",
    cg.memoryBytes === input.limits.memoryBytes,
    `${cg.memoryBytes ?? "?"} (want ${input.limits.memoryBytes})`,
  );
  const wantQuota = Math.max(1000, Math.round(input.limits.cpus * 100_000));
  check(
    "cgroup.cpu",
    cg.cpuQuotaUs === wantQuota && cg.cpuPeriodUs === 100_000,
    `${cg.cpuQuotaUs ?? "?"}/${cg.cpuPeriodUs ?? "?"} (want ${wantQuota}/100000)`,
  );
  check(
    "cgroup.pids",
    cg.pids === input.limits.pids,
    `${cg.pids ?? "?"} (want ${input.limits.pids})`,
  );

  if (hasIoLimits(input.limits) || input.blockIo) {
    // Every limited kind must be planned on at least one device, and every planned
    // throttle must be in force at exactly its rate on exactly its device.
    const unplanned = IO_LIMIT_KEYS.filter(
      (k) =>
        input.limits[k] > 0 &&
        !(input.blockIo?.[THROTTLES[k].oci] ?? []).some((t) => t.rate === input.limits[k]),
    ).map((k) => `${THROTTLES[k].v2} not planned (want ${input.limits[k]})`);
    const missing = [
      ...unplanned,
      ...missingThrottles(input.blockIo, cg.io ?? emptyIoThrottleSeen()),
    ];
    check(
      "cgroup.io",
      missing.length === 0,
      missing.length === 0 ? "every planned throttle in force" : missing.join("; "),
    );
  }

  const failed = checks.find((c) => !c.ok);
  return failed
    ? { ok: false, failed: failed.name, detail: failed.detail, checks }
    : { ok: true, checks };
}
