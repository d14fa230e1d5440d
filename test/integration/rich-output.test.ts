/**
 * Rich outputs of a Python context, in Jupyter's MIME-bundle shape: figures as PNG (on
 * plt.show() or left open at the end of a cell), one per figure and each exactly once;
 * DataFrames as HTML; display() of objects with rich representations; the size cap.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LIMITS } from "../../src/core/limits.js";
import type { RichResult } from "../../src/sandbox/context.js";
import { Session } from "../../src/sandbox/session.js";
import { type TestEnv, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
let s: Session;
beforeAll(async () => {
  env = await testEnv("rich");
  s = await Session.create(env.host, { image: env.image, limits: { ...DEFAULT_LIMITS } });
});
afterAll(async () => {
  await s?.destroy();
  env?.close();
});

const pngs = (results: RichResult[]) =>
  results
    .filter((r) => typeof r.data["image/png"] === "string")
    .map((r) => Buffer.from(r.data["image/png"] as string, "base64"));

describe("figures", () => {
  it("a bar chart with plt.show() comes back as one PNG", async () => {
    const r = await s.runCode(
      "import matplotlib.pyplot as plt\nplt.bar(['a', 'b', 'c'], [3, 1, 2])\nplt.show()",
    );
    expect(r.error).toBeNull();
    const images = pngs(r.results);
    expect(images).toHaveLength(1);
    expect(images[0]!.subarray(0, 8)).toEqual(
      Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    );
    expect(r.results.find((x) => x.data["image/png"])?.kind).toBe("display");
    // Shown and closed: the next cell shows nothing again.
    expect(pngs((await s.runCode("1")).results)).toHaveLength(0);
  });

  it("a cell that leaves two figures open gives one PNG each, each once", async () => {
    const r = await s.runCode(
      "f1 = plt.figure(); plt.plot([1, 2, 3])\nf2 = plt.figure(); plt.plot([3, 2, 1]); None",
    );
    const images = pngs(r.results);
    expect(images).toHaveLength(2);
    expect(images[0]!.equals(images[1]!)).toBe(false);
    expect(pngs((await s.runCode("plt.get_fignums()")).results)).toHaveLength(0);
  });

  it("show() mid-cell and a figure left open at the end: two, in order", async () => {
    const r = await s.runCode(
      "plt.plot([1, 2]); plt.show()\nprint('between')\nplt.figure(); plt.plot([2, 1]); None",
    );
    expect(pngs(r.results)).toHaveLength(2);
    expect(r.stdout.text).toBe("between\n");
  });

  it("SVG when asked for", async () => {
    const r = await s.runCode(
      "%config InlineBackend.figure_formats = ['svg']\nplt.plot([1, 2]); plt.show()\n%config InlineBackend.figure_formats = ['png']",
    );
    const svg = r.results.find((x) => typeof x.data["image/svg+xml"] === "string");
    expect(svg?.data["image/svg+xml"]).toMatch(/<svg[\s>]/);
  });
});

describe("files of figures", () => {
  it("plt.savefig('/work/out.png') downloads byte-identical", async () => {
    const r = await s.runCode(
      "import hashlib\nplt.plot([1, 4, 9]); plt.savefig('/work/out.png'); plt.close('all')\nhashlib.sha256(open('/work/out.png', 'rb').read()).hexdigest()",
    );
    const inside = String(r.results[0]?.data["text/plain"]).replace(/'/g, "");
    const { createHash } = await import("node:crypto");
    const bytes = (await s.files.read("/work/out.png", { format: "bytes" })) as Uint8Array;
    expect(createHash("sha256").update(bytes).digest("hex")).toBe(inside);
    expect(Buffer.from(bytes).subarray(1, 4).toString()).toBe("PNG");
    // Saved and closed: no figure is displayed besides.
    expect(pngs(r.results)).toHaveLength(0);
  });
});

describe("tables and rich objects", () => {
  it("df.head() as the last expression gives text/html and text/plain", async () => {
    const r = await s.runCode(
      "import pandas as pd\ndf = pd.DataFrame({'city': ['Hà Nội', 'Paris'], 'n': [1, 2]})\ndf.head()",
    );
    expect(r.results).toHaveLength(1);
    const [main] = r.results;
    expect(main!.isMainResult).toBe(true);
    expect(main!.data["text/html"]).toMatch(/<table[\s\S]*Hà Nội[\s\S]*<\/table>/);
    expect(main!.data["text/plain"]).toMatch(/city\s+n\n0\s+Hà Nội\s+1/);
  });

  it("display() of objects with rich representations: HTML, JSON, Markdown", async () => {
    const r = await s.runCode(
      [
        "from IPython.display import display, HTML, JSON, Markdown",
        "display(HTML('<i>x</i>'))",
        "display(JSON({'a': [1, 2]}))",
        "display(Markdown('**b**'))",
      ].join("\n"),
    );
    expect(r.results.map((x) => x.kind)).toEqual(["display", "display", "display"]);
    expect(r.results[0]!.data["text/html"]).toBe("<i>x</i>");
    expect(r.results[1]!.data["application/json"]).toEqual({ a: [1, 2] });
    expect(r.results[2]!.data["text/markdown"]).toBe("**b**");
  });

  it("an image too large to carry is replaced by a clear marker", async () => {
    const r = await s.runCode(
      [
        "import os",
        "class Big:",
        "    def _repr_png_(self): return b'\\x89PNG\\r\\n\\x1a\\n' + os.urandom(9 << 20)",
        "    def __repr__(self): return 'Big()'",
        "Big()",
      ].join("\n"),
    );
    expect(r.results).toHaveLength(1);
    expect(r.results[0]!.data["image/png"]).toBeUndefined();
    expect(r.results[0]!.data["text/plain"]).toMatch(
      /Big\(\)\n\[corral: output too large, dropped: image\/png/,
    );
  });
});
