import { describe, expect, it } from "vitest";
import { CorralError } from "../../src/core/errors.js";
import {
  canonicalJson,
  loadDefaultRecipe,
  normaliseRecipe,
  parseRecipe,
  recipeKey,
  shortKey,
} from "../../src/images/recipe.js";

const MIRROR = "http://mirror.invalid/debian";

describe("recipe validation", () => {
  it("fills the defaults", () => {
    expect(parseRecipe("name: tiny\n")).toEqual({
      name: "tiny",
      suite: "bookworm",
      architecture: "amd64",
      packages: [],
      setup: [],
      env: {},
    });
  });

  it.each([
    ["suite: bookworm\n", "recipe.yaml: name: is required"],
    ["name: Big Name\n", 'recipe.yaml: name: "Big Name" must be lower-case letters, digits'],
    [
      "name: x\narchitecture: arm64\n",
      'recipe.yaml: architecture: "arm64" is not supported (only amd64, for now)',
    ],
    [
      "name: x\npackages: [python3, 'rm -rf']\n",
      'recipe.yaml: packages.1: "rm -rf" is not a Debian package name',
    ],
    ["name: x\npackages: ['a,b']\n", 'recipe.yaml: packages.0: "a,b" is not a Debian package name'],
    ["name: x\nenv: {'1BAD': x}\n", 'recipe.yaml: env: "1BAD" is not an environment variable name'],
    [
      "name: x\nmirror: ftp.invalid\n",
      'recipe.yaml: mirror: "ftp.invalid" must be an http://, https:// or file:// URL',
    ],
    ["name: x\npackage: [python3]\n", "recipe.yaml: recipe: unknown field package"],
    ["name: x\nsetup: echo hi\n", "recipe.yaml: setup: must be a list, not string"],
    ["- just a list\n", "recipe.yaml: a recipe is a YAML mapping with at least a name"],
    ["name: [unclosed\n", "recipe.yaml: not valid YAML"],
  ])("rejects %j with one clear line", (text, start) => {
    let error: unknown;
    try {
      parseRecipe(text, "recipe.yaml");
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(CorralError);
    const e = error as CorralError;
    expect(e.code).toBe("invalid_argument");
    expect(e.message).not.toContain("\n");
    expect(e.message.startsWith(start)).toBe(true);
  });

  it("reads numbers and booleans in env as strings", () => {
    expect(parseRecipe("name: x\nenv: {A: 1, B: true}\n").env).toEqual({ A: "1", B: "true" });
  });

  it("sorts and de-duplicates packages, keeps setup order, sorts env keys", () => {
    const r = normaliseRecipe({
      name: "x",
      packages: ["zsh", "bash", "zsh", "python3=3.11.2-1+b1"],
      setup: ["b", "a"],
      env: { Z: "1", A: "2" },
      mirror: "http://mirror.invalid/debian/",
    });
    expect(r.packages).toEqual(["bash", "python3=3.11.2-1+b1", "zsh"]);
    expect(r.setup).toEqual(["b", "a"]);
    expect(Object.keys(r.env)).toEqual(["A", "Z"]);
    expect(r.mirror).toBe("http://mirror.invalid/debian");
  });
});

describe("recipe key", () => {
  const base = normaliseRecipe({
    name: "x",
    packages: ["less", "file"],
    setup: ["one", "two"],
    env: { A: "1", B: "2" },
  });

  it("is a stable sha256 over the canonical recipe and mirror", () => {
    const key = recipeKey(base, MIRROR);
    expect(key).toMatch(/^[0-9a-f]{64}$/);
    // Pinned: a change to the canonical form changes every cache key, and should be deliberate.
    expect(key).toBe("325524cadc13034366099e62eb7a5d82b1d04df9c3851da71b341b9efb507a38");
    expect(key).toBe(
      recipeKey(
        normaliseRecipe({
          name: "x",
          packages: ["file", "less", "file"],
          setup: ["one", "two"],
          env: { B: "2", A: "1" },
        }),
        `${MIRROR}/`,
      ),
    );
    expect(shortKey(key)).toBe(key.slice(0, 16));
  });

  it("ignores package order, duplicates and where the mirror came from", () => {
    const same = normaliseRecipe({
      name: "x",
      packages: ["file", "less", "less"],
      setup: ["one", "two"],
      env: { B: "2", A: "1" },
      mirror: MIRROR,
    });
    expect(recipeKey(same, MIRROR)).toBe(recipeKey(base, MIRROR));
  });

  it.each([
    ["name", { name: "y" }],
    ["suite", { suite: "trixie" }],
    ["packages", { packages: ["file", "less", "curl"] }],
    ["setup order", { setup: ["two", "one"] }],
    ["env", { env: { A: "1", B: "3" } }],
  ])("changes with %s", (_label, change) => {
    const other = normaliseRecipe({ ...base, ...change });
    expect(recipeKey(other, MIRROR)).not.toBe(recipeKey(base, MIRROR));
  });

  it("changes with the mirror", () => {
    expect(recipeKey(base, "http://other.invalid/debian")).not.toBe(recipeKey(base, MIRROR));
  });

  it("canonical JSON sorts keys at every level", () => {
    expect(canonicalJson({ b: [{ d: 1, c: 2 }], a: "x", u: undefined })).toBe(
      '{"a":"x","b":[{"c":2,"d":1}]}',
    );
  });
});

describe("the built-in recipe", () => {
  it("is valid and named default", async () => {
    const r = await loadDefaultRecipe();
    expect(r.name).toBe("default");
    expect(r.suite).toBe("bookworm");
    expect(r.packages).toContain("python3-ipykernel");
    expect(r.packages).toContain("r-base-core");
    expect(r.env.PATH?.startsWith("/opt/venv/bin:")).toBe(true);
    expect(r.env.MPLBACKEND).toBe("Agg");
    expect(
      r.setup.some((s) => s.includes("python3 -m venv --system-site-packages /opt/venv")),
    ).toBe(true);
  });
});
