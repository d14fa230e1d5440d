/**
 * The Debian mirror to build images from, read from the host's own apt configuration, so
 * that a machine behind a local mirror or proxy builds from the same place it installs its
 * own packages from. The parsers are pure; only `findHostMirror` touches the disk.
 */
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";

/** One `deb` (or `deb-src`) source: a repository URI with its suites and components. */
export interface AptSource {
  types: string[];
  uris: string[];
  suites: string[];
  components: string[];
  /** `Architectures:` / `[arch=…]`, when the source restricts them. */
  architectures?: string[];
  enabled: boolean;
}

/**
 * Debian's suite names and aliases. A source for a suite other than the recipe's is used
 * only if it is one of these, so that a third-party repository that also has a `main`
 * component (`nodistro main`, `cloud-sdk-bookworm main`) or another distribution's archive
 * is never mistaken for a Debian mirror.
 */
const DEBIAN_SUITES = new Set([
  "buster",
  "bullseye",
  "bookworm",
  "trixie",
  "forky",
  "duke",
  "sid",
  "oldoldstable",
  "oldstable",
  "stable",
  "testing",
  "unstable",
]);

/** Parse deb822 `.sources` text: stanzas separated by blank lines, `Field: value` lines. */
export function parseDeb822Sources(text: string): AptSource[] {
  const sources: AptSource[] = [];
  const stanzas: Map<string, string>[] = [];
  let current = new Map<string, string>();
  let lastKey: string | null = null;
  for (const raw of text.split(/\r?\n/)) {
    if (raw.startsWith("#")) continue;
    if (raw.trim() === "") {
      if (current.size > 0) stanzas.push(current);
      current = new Map();
      lastKey = null;
      continue;
    }
    if (/^\s/.test(raw)) {
      // A continuation line belongs to the previous field (multi-line values).
      if (lastKey !== null) current.set(lastKey, `${current.get(lastKey) ?? ""} ${raw.trim()}`);
      continue;
    }
    const colon = raw.indexOf(":");
    if (colon <= 0) continue;
    lastKey = raw.slice(0, colon).trim().toLowerCase();
    current.set(lastKey, raw.slice(colon + 1).trim());
  }
  if (current.size > 0) stanzas.push(current);

  const words = (v: string | undefined): string[] => (v ?? "").split(/\s+/).filter((w) => w !== "");
  for (const s of stanzas) {
    const enabled = !/^(no|false|0)$/i.test(s.get("enabled") ?? "yes");
    const architectures = s.has("architectures") ? words(s.get("architectures")) : undefined;
    sources.push({
      types: words(s.get("types")),
      uris: words(s.get("uris")),
      suites: words(s.get("suites")),
      components: words(s.get("components")),
      ...(architectures ? { architectures } : {}),
      enabled,
    });
  }
  return sources;
}

/** Parse classic one-line `sources.list` text: `deb [opts] URI suite component…`. */
export function parseSourcesList(text: string): AptSource[] {
  const sources: AptSource[] = [];
  for (const raw of text.split(/\r?\n/)) {
    const hash = raw.indexOf("#");
    const line = (hash >= 0 ? raw.slice(0, hash) : raw).trim();
    if (line === "") continue;
    const m = /^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)(?:\s+(.*))?$/.exec(line);
    if (!m) continue;
    const [, type, options, uri, suite, components] = m;
    let architectures: string[] | undefined;
    for (const opt of (options ?? "").trim().split(/\s+/)) {
      const eq = opt.indexOf("=");
      if (eq > 0 && opt.slice(0, eq) === "arch") architectures = opt.slice(eq + 1).split(",");
    }
    sources.push({
      types: [type as string],
      uris: [uri as string],
      suites: [suite as string],
      components: (components ?? "").split(/\s+/).filter((w) => w !== ""),
      ...(architectures ? { architectures } : {}),
      enabled: true,
    });
  }
  return sources;
}

function isUpdateSuite(suite: string): boolean {
  return (
    /-(security|updates|backports|proposed-updates)$/.test(suite) || suite.includes("/updates")
  );
}

/**
 * The mirror for `suite`: the first enabled binary (`deb`) source of a usable URI that
 * serves `suite` itself; failing that, the first that serves `main` of a Debian suite
 * (the host runs another release of Debian from the same mirror). Security and update
 * suites never count. The URI is returned without its trailing slash.
 */
export function pickMirror(
  sources: readonly AptSource[],
  suite: string,
  architecture = "amd64",
): string | null {
  const usable = sources.filter(
    (s) =>
      s.enabled &&
      s.types.includes("deb") &&
      (s.architectures === undefined || s.architectures.includes(architecture)) &&
      s.uris.some((u) => /^(https?|file):\/\//.test(u)),
  );
  const uriOf = (s: AptSource): string =>
    (s.uris.find((u) => /^(https?|file):\/\//.test(u)) as string).replace(/\/+$/, "");
  const exact = usable.find((s) => s.suites.includes(suite));
  if (exact) return uriOf(exact);
  const debianMain = usable.find(
    (s) =>
      s.components.includes("main") &&
      s.suites.some((x) => !isUpdateSuite(x) && DEBIAN_SUITES.has(x)),
  );
  return debianMain ? uriOf(debianMain) : null;
}

async function readIfExists(file: string): Promise<string | null> {
  try {
    return await readFile(file, "utf8");
  } catch {
    return null;
  }
}

/** All sources configured under `<root>/etc/apt`, in apt's order: sources.list, then the directory sorted. */
export async function readHostSources(root = "/"): Promise<AptSource[]> {
  const etc = path.join(root, "etc/apt");
  const sources: AptSource[] = [];
  const main = await readIfExists(path.join(etc, "sources.list"));
  if (main !== null) sources.push(...parseSourcesList(main));
  let names: string[] = [];
  try {
    names = (await readdir(path.join(etc, "sources.list.d"))).sort();
  } catch {
    // no directory
  }
  for (const name of names) {
    const file = path.join(etc, "sources.list.d", name);
    if (name.endsWith(".list")) {
      const text = await readIfExists(file);
      if (text !== null) sources.push(...parseSourcesList(text));
    } else if (name.endsWith(".sources")) {
      const text = await readIfExists(file);
      if (text !== null) sources.push(...parseDeb822Sources(text));
    }
  }
  return sources;
}

/** The host's Debian mirror for `suite`, or null if its apt configuration names none. */
export async function findHostMirror(suite = "bookworm", root = "/"): Promise<string | null> {
  return pickMirror(await readHostSources(root), suite);
}
