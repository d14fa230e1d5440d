import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import {
  findHostMirror,
  parseDeb822Sources,
  parseSourcesList,
  pickMirror,
} from "../../src/images/mirror.js";

const DEB822 = `Types: deb
# a comment inside the stanza
URIs: http://mirror.invalid/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.mirror.invalid/debian-security
Suites: bookworm-security
Components: main
`;

const CLASSIC = `# deb cdrom:[Debian GNU/Linux 12]/ bookworm main
deb-src http://src.mirror.invalid/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://classic.mirror.invalid/debian/ bookworm main contrib # trailing comment
deb http://classic.mirror.invalid/debian-security bookworm-security main
`;

describe("apt source parsing", () => {
  it("parses deb822 stanzas", () => {
    const sources = parseDeb822Sources(DEB822);
    expect(sources).toHaveLength(2);
    expect(sources[0]).toEqual({
      types: ["deb"],
      uris: ["http://mirror.invalid/debian/"],
      suites: ["bookworm", "bookworm-updates"],
      components: ["main"],
      enabled: true,
    });
  });

  it("parses one-line sources with options and comments", () => {
    const sources = parseSourcesList(CLASSIC);
    expect(sources.map((s) => s.types[0])).toEqual(["deb-src", "deb", "deb"]);
    expect(sources[1]).toEqual({
      types: ["deb"],
      uris: ["http://classic.mirror.invalid/debian/"],
      suites: ["bookworm"],
      components: ["main", "contrib"],
      architectures: ["amd64"],
      enabled: true,
    });
  });

  it("honours Enabled: no", () => {
    const [s] = parseDeb822Sources(
      "Enabled: no\nTypes: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\nComponents: main\n",
    );
    expect(s?.enabled).toBe(false);
  });
});

describe("mirror choice", () => {
  it.each([
    [
      "deb822 main mirror, trailing slash stripped",
      DEB822,
      "bookworm",
      "http://mirror.invalid/debian",
    ],
    [
      "classic: skips deb-src and security",
      CLASSIC,
      "bookworm",
      "http://classic.mirror.invalid/debian",
    ],
    ["another Debian suite that serves main", DEB822, "trixie", "http://mirror.invalid/debian"],
    [
      "a third-party repository with main is not a Debian mirror",
      "deb https://repo.invalid/node nodistro main\ndeb https://cloud.invalid/apt cloud-sdk-bookworm main\n",
      "bookworm",
      null,
    ],
    [
      "only security and updates",
      "deb http://s.invalid/debian-security bookworm-security main\ndeb http://u.invalid/debian bookworm-updates main\n",
      "bookworm",
      null,
    ],
    ["only deb-src", "deb-src http://src.invalid/debian bookworm main\n", "bookworm", null],
    [
      "another architecture only",
      "deb [arch=arm64] http://arm.invalid/debian bookworm main\n",
      "bookworm",
      null,
    ],
    [
      "an exact suite wins over an earlier main",
      "deb http://first.invalid/debian trixie main\ndeb http://second.invalid/debian bookworm main\n",
      "bookworm",
      "http://second.invalid/debian",
    ],
    ["nothing", "", "bookworm", null],
  ])("%s", (_label, text, suite, expected) => {
    const sources = text.includes("Types:") ? parseDeb822Sources(text) : parseSourcesList(text);
    expect(pickMirror(sources, suite)).toBe(expected);
  });

  it("reads a host's sources.list and sources.list.d in apt's order", async () => {
    const root = await mkdtemp(path.join(tmpdir(), "corral-mirror-"));
    try {
      await mkdir(path.join(root, "etc/apt/sources.list.d"), { recursive: true });
      await writeFile(path.join(root, "etc/apt/sources.list"), "# nothing here\n");
      await writeFile(
        path.join(root, "etc/apt/sources.list.d/a-third-party.list"),
        "deb https://repo.invalid/node nodistro main\n",
      );
      await writeFile(path.join(root, "etc/apt/sources.list.d/debian.sources"), DEB822);
      await writeFile(
        path.join(root, "etc/apt/sources.list.d/z.list.disabled"),
        "deb http://disabled.invalid/debian bookworm main\n",
      );
      expect(await findHostMirror("bookworm", root)).toBe("http://mirror.invalid/debian");
      expect(await findHostMirror("bookworm", path.join(root, "nowhere"))).toBeNull();
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
