/**
 * The runc vulnerabilities that matter to Corral, as data, and what a given runc build is
 * exposed to. Pure: `corral doctor` passes in what `runc --version` printed.
 *
 * Distributions backport fixes without changing the upstream version, so a version
 * number alone can be wrong both ways; Debian's revisions are known here. Debian's
 * bookworm runc (1.1.5+ds1-1+deb12u1) carries the fix for CVE-2024-21626 but predates the
 * 2025 /proc and /dev/console fixes, which upstream made only for 1.2 and later.
 */

export interface RuncCve {
  id: string;
  summary: string;
  /** The first fixed release of each maintained branch, oldest first. */
  fixedIn: string[];
  /** Debian packages that carry the fix: upstream version → lowest stable update N (`+debXuN`). */
  debianBackports?: Record<string, number>;
  /** How Corral's configuration blunts the attack while the fix is missing, if it does. */
  mitigation?: string;
}

const USERNS_MITIGATION =
  "mitigated: user namespaces are mandatory, so the host /proc files these attacks write are not writable by the sandbox's unprivileged range";

export const RUNC_CVES: readonly RuncCve[] = [
  {
    id: "CVE-2019-5736",
    summary: "a container overwrites the host's runc binary through /proc/self/exe",
    fixedIn: ["1.0.0-rc6"],
    mitigation:
      "mitigated: user namespaces (the host's runc binary is not writable from the mapped range)",
  },
  {
    id: "CVE-2021-30465",
    summary: "a symlink-exchange race turns a container mount into a host mount",
    fixedIn: ["1.0.0-rc95"],
  },
  {
    id: "CVE-2024-21626",
    summary: "a leaked host file descriptor (/sys/fs/cgroup) as working directory reaches the host",
    fixedIn: ["1.1.12"],
    debianBackports: { "1.1.5": 1 },
  },
  {
    id: "CVE-2025-31133",
    summary: "maskedPaths bind-mounts a swapped /dev/null, exposing writable /proc files",
    fixedIn: ["1.2.8", "1.3.3", "1.4.0-rc.3"],
    mitigation: USERNS_MITIGATION,
  },
  {
    id: "CVE-2025-52565",
    summary: "a /dev/console bind mount redirected to /proc files",
    fixedIn: ["1.2.8", "1.3.3", "1.4.0-rc.3"],
    mitigation: USERNS_MITIGATION,
  },
  {
    id: "CVE-2025-52881",
    summary: "runc's own writes to /proc redirected (LSM labels, sysctls) to arbitrary files",
    fixedIn: ["1.2.8", "1.3.3", "1.4.0-rc.3"],
    mitigation: USERNS_MITIGATION,
  },
];

export interface RuncVersion {
  /** The upstream version, e.g. 1.1.5 or 1.0.0-rc95. */
  upstream: string;
  /** The distribution package version when the build says so (runc's `commit:` line). */
  debian: { package: string; upstream: string; update: number } | null;
}

/** What `runc --version` printed → the version, or null when it is not recognisable. */
export function parseRuncVersion(text: string): RuncVersion | null {
  const m = /^runc version (\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?)/m.exec(text);
  if (!m) return null;
  // Debian puts the package version in the commit line: 1.1.5+ds1-1+deb12u1.
  const d = /^commit: ((\d+\.\d+\.\d+)\+ds\d+-\d+(?:\+deb\d+u(\d+))?)\s*$/m.exec(text);
  return {
    upstream: m[1]!,
    debian: d
      ? { package: d[1]!, upstream: d[2]!, update: d[3] === undefined ? 0 : Number(d[3]) }
      : null,
  };
}

/** Version tokens: numbers compare as numbers, words as words ("rc6" < "rc95"). */
function tokens(part: string): (number | string)[] {
  return (part.match(/\d+|[A-Za-z]+/g) ?? []).map((t) => (/^\d+$/.test(t) ? Number(t) : t));
}

function compareTokens(a: (number | string)[], b: (number | string)[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i];
    const y = b[i];
    if (x === undefined) return -1;
    if (y === undefined) return 1;
    if (x === y) continue;
    if (typeof x === "number" && typeof y === "number") return x - y;
    return String(x) < String(y) ? -1 : 1;
  }
  return 0;
}

/** Compare two versions like 1.1.5, 1.0.0-rc95, 1.4.0-rc.3 (a release sorts after its rcs). */
export function compareVersions(a: string, b: string): number {
  const [aCore = "", aPre] = a.split("-", 2);
  const [bCore = "", bPre] = b.split("-", 2);
  const core = compareTokens(tokens(aCore), tokens(bCore));
  if (core !== 0) return core;
  if (aPre === undefined && bPre === undefined) return 0;
  if (aPre === undefined) return 1;
  if (bPre === undefined) return -1;
  return compareTokens(tokens(aPre), tokens(bPre));
}

const branch = (v: string) => v.split(".").slice(0, 2).join(".");

/**
 * Whether `v` has the upstream fix: at or past the fix of its own branch when that branch
 * got one, otherwise at or past the newest fix (a branch that was never fixed, such as
 * 1.1 for the 2025 CVEs, stays affected).
 */
export function hasUpstreamFix(v: string, fixedIn: readonly string[]): boolean {
  const own = fixedIn.find((f) => branch(f) === branch(v));
  if (own !== undefined) return compareVersions(v, own) >= 0;
  const newest = fixedIn[fixedIn.length - 1];
  return newest !== undefined && compareVersions(v, newest) >= 0;
}

export type CveStatus = "fixed" | "backported" | "mitigated" | "open";

export interface CveAssessment {
  cve: RuncCve;
  status: CveStatus;
  detail: string;
}

export function assessRuncCves(
  version: RuncVersion,
  userNamespaces: boolean,
  table: readonly RuncCve[] = RUNC_CVES,
): CveAssessment[] {
  return table.map((cve) => {
    const fixes = cve.fixedIn.join(", ");
    if (hasUpstreamFix(version.upstream, cve.fixedIn)) {
      return { cve, status: "fixed", detail: `fixed in ${version.upstream} (fixed in ${fixes})` };
    }
    const minRevision = version.debian ? cve.debianBackports?.[version.debian.upstream] : undefined;
    if (version.debian && minRevision !== undefined && version.debian.update >= minRevision) {
      return {
        cve,
        status: "backported",
        detail: `fixed by Debian's backport in ${version.debian.package} (upstream fixed in ${fixes})`,
      };
    }
    const open = `${version.upstream} is affected: ${cve.summary} (fixed in ${fixes})`;
    if (cve.mitigation && userNamespaces) {
      return { cve, status: "mitigated", detail: `${open}; ${cve.mitigation}` };
    }
    return { cve, status: "open", detail: open };
  });
}
