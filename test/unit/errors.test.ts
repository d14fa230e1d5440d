import { describe, expect, it } from "vitest";
import { escapeUntrusted, oneLine, quoteBytes, quoteUntrusted } from "../../src/core/errors.js";

describe("messages carry no raw outside text", () => {
  it.each([
    ["etc/passwd", "etc/passwd"],
    ["a\u001b[2Jb", "a\\x1b[2Jb"],
    ["tab\there\nnext\r", "tab\\there\\nnext\\r"],
    ["del\u007f c1\u0085", "del\\x7f c1\\x85"],
    ["ünïcødé 日本 ©", "ünïcødé 日本 ©"],
    ["bidi\u202egnp.exe", "bidi\\u{202e}gnp.exe"],
    ["nbsp\u00a0", "nbsp\\xa0"],
    ["back\\slash", "back\\\\slash"],
  ])("escapes %j", (text, escaped) => {
    expect(escapeUntrusted(text)).toBe(escaped);
  });

  it("quotes like JSON for plain text, and stays one line", () => {
    expect(quoteUntrusted('a "b"')).toBe(JSON.stringify('a "b"'));
    expect(oneLine(quoteUntrusted("x\ny"))).toBe('"x\\ny"');
  });

  it("shows raw bytes as printable ASCII or \\xNN", () => {
    expect(quoteBytes(Buffer.from([0x68, 0x69, 0x00, 0xff, 0x1b, 0x5c]))).toBe(
      '"hi\\x00\\xff\\x1b\\\\"',
    );
  });
});
