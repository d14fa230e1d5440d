/**
 * Image recipes: a small YAML file naming a Debian suite, the apt packages to install, the
 * shell commands that finish the image, and the environment sandboxes get. A recipe is
 * validated once, here, and normalised (defaults filled, packages sorted and unique) so
 * that two recipes meaning the same image have the same key.
 */
import { createHash } from "node:crypto";
import { access, readFile } from "node:fs/promises";
import path from "node:path";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { CorralError } from "../core/errors.js";
import { packageRoot } from "../core/package-root.js";
import { ENV_NAME } from "../core/run-options.js";

/** Architectures a recipe may name. Only amd64 is built and tested for now. */
export const ARCHITECTURES = ["amd64"] as const;
export const DEFAULT_SUITE = "bookworm";

// Image names become file names under <imageDir>/names, so they are kept to a safe alphabet.
const NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
// Debian package names (policy 5.6.1), optionally pinned with =version: they are passed to
// apt-get as arguments (never through a shell), but a comma would split debootstrap lists.
const PACKAGE = /^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$/;
const SUITE = /^[a-z][a-z0-9-]{1,40}$/;

const recipeSchema = z
  .object({
    name: z
      .string()
      .regex(NAME, "must be lower-case letters, digits, '.', '_' or '-' (at most 63)"),
    suite: z
      .string()
      .regex(SUITE, "must be a Debian suite name such as bookworm")
      .default(DEFAULT_SUITE),
    architecture: z
      .enum(ARCHITECTURES, {
        error: `is not supported (only ${ARCHITECTURES.join(", ")}, for now)`,
      })
      .default("amd64"),
    mirror: z
      .string()
      .regex(/^(https?|file):\/\/\S+$/, "must be an http://, https:// or file:// URL")
      .optional(),
    packages: z.array(z.string().regex(PACKAGE, "is not a Debian package name")).default([]),
    setup: z
      .array(
        z
          .string()
          .min(1, "must not be empty")
          .refine((s) => !s.includes("\0"), "must not contain NUL"),
      )
      .default([]),
    env: z
      .record(
        z.string().regex(ENV_NAME, "is not an environment variable name"),
        // YAML reads `PIP_NO_INPUT: 1` as a number: environment values are strings anyway.
        z
          .union([z.string(), z.number(), z.boolean()])
          .transform(String)
          .refine((s) => !s.includes("\0"), "must not contain NUL"),
      )
      .default({}),
  })
  .strict();

/** A recipe as written (before defaults). */
export type RecipeInput = z.input<typeof recipeSchema>;

/** A validated, normalised recipe. */
export interface Recipe {
  name: string;
  suite: string;
  architecture: (typeof ARCHITECTURES)[number];
  mirror?: string;
  packages: string[];
  setup: string[];
  env: Record<string, string>;
}

/** The first zod issue as one line: `packages.3: "Foo" is not a Debian package name`. */
function describeIssue(error: z.ZodError, value: unknown): string {
  const issue = error.issues[0];
  if (!issue) return "invalid recipe";
  const where = issue.path.length > 0 ? issue.path.map(String).join(".") : "recipe";
  let shown: unknown = value;
  for (const key of issue.path) {
    shown =
      shown !== null && typeof shown === "object"
        ? (shown as Record<PropertyKey, unknown>)[key]
        : undefined;
  }
  switch (issue.code) {
    case "unrecognized_keys":
      return `${where}: unknown field${issue.keys.length > 1 ? "s" : ""} ${issue.keys.join(", ")}`;
    case "invalid_type":
      if (shown === undefined) return `${where}: is required`;
      return `${where}: must be ${issue.expected === "array" ? "a list" : issue.expected === "object" || issue.expected === "record" ? "a mapping" : `a ${issue.expected}`}, not ${Array.isArray(shown) ? "a list" : typeof shown}`;
    case "invalid_key": {
      const key = issue.path[issue.path.length - 1];
      const parent = issue.path.slice(0, -1).map(String).join(".");
      return `${parent}: ${JSON.stringify(String(key))} ${issue.issues[0]?.message ?? "is not a valid key"}`;
    }
    default: {
      const prefix = typeof shown === "string" ? `${JSON.stringify(shown)} ` : "";
      return `${where}: ${prefix}${issue.message}`;
    }
  }
}

/** Validate and normalise a recipe object; `source` names it in error messages. */
export function normaliseRecipe(input: unknown, source = "recipe"): Recipe {
  const parsed = recipeSchema.safeParse(input);
  if (!parsed.success) {
    throw new CorralError("invalid_argument", `${source}: ${describeIssue(parsed.error, input)}`);
  }
  const r = parsed.data;
  const env: Record<string, string> = {};
  for (const key of Object.keys(r.env).sort()) env[key] = r.env[key] as string;
  return {
    name: r.name,
    suite: r.suite,
    architecture: r.architecture,
    ...(r.mirror !== undefined ? { mirror: r.mirror.replace(/\/+$/, "") } : {}),
    packages: [...new Set(r.packages)].sort(),
    setup: [...r.setup],
    env,
  };
}

/** Parse recipe YAML text (one document). */
export function parseRecipe(text: string, source = "recipe"): Recipe {
  let data: unknown;
  try {
    data = parseYaml(text, { prettyErrors: false, uniqueKeys: true });
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new CorralError("invalid_argument", `${source}: not valid YAML: ${message}`);
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new CorralError(
      "invalid_argument",
      `${source}: a recipe is a YAML mapping with at least a name`,
    );
  }
  return normaliseRecipe(data, source);
}

export async function loadRecipe(file: string): Promise<Recipe> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CorralError(
      code === "ENOENT" ? "not_found" : "invalid_argument",
      `cannot read recipe ${file}: ${code ?? String(err)}`,
    );
  }
  return parseRecipe(text, file);
}

/** JSON with object keys sorted at every level: one text per value. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.keys(value)
      .sort()
      .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`);
    return `{${entries.join(",")}}`;
  }
  return JSON.stringify(value);
}

/**
 * The recipe's key: sha256 (hex) of the canonical JSON of the normalised recipe and the
 * mirror actually used. The recipe's own `mirror` field is left out because the mirror in
 * use is hashed instead: a mirror given in the recipe or with --mirror is the same image.
 */
export function recipeKey(recipe: Recipe, mirror: string): string {
  const { mirror: _ignored, ...rest } = normaliseRecipe(recipe);
  const text = canonicalJson({ recipe: rest, mirror: mirror.replace(/\/+$/, "") });
  return createHash("sha256").update(text).digest("hex");
}

/** The cache directory name of a recipe key: its first 16 hex digits. */
export function shortKey(fullKey: string): string {
  return fullKey.slice(0, 16);
}

/** The built-in recipe ships as src/images/default.yaml in the package. */
export async function defaultRecipePath(): Promise<string> {
  const file = path.join(packageRoot(), "src/images/default.yaml");
  try {
    await access(file);
    return file;
  } catch {
    throw new CorralError(
      "internal",
      "the built-in recipe src/images/default.yaml is missing from the installation",
    );
  }
}

export async function loadDefaultRecipe(): Promise<Recipe> {
  return loadRecipe(await defaultRecipePath());
}
