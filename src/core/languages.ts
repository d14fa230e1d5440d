/**
 * How each language's code is run in a one-shot sandbox: the code is written to a file
 * inside the sandbox by the supervisor, then this argv runs it in /work.
 */
import { CorralError } from "./errors.js";
import { LANGUAGES, type Language } from "./sandbox.js";

export const CODE_DIR = "/.corral/code";
export const SQL_DATABASE = "/work/db.sqlite";

const EXTENSIONS: Record<Language, string> = { python: "py", r: "R", shell: "sh", sql: "sql" };

export function parseLanguage(text: string): Language {
  const lower = text.toLowerCase();
  const aliases: Record<string, Language> = {
    py: "python",
    python3: "python",
    sh: "shell",
    bash: "shell",
    sqlite: "sql",
  };
  const lang = (LANGUAGES as readonly string[]).includes(lower)
    ? (lower as Language)
    : aliases[lower];
  if (!lang) {
    throw new CorralError(
      "invalid_argument",
      `unknown language "${text}": expected one of ${LANGUAGES.join(", ")}`,
    );
  }
  return lang;
}

export function codeFileFor(lang: Language): string {
  return `${CODE_DIR}/main.${EXTENSIONS[lang]}`;
}

export function argvFor(lang: Language, codeFile: string): string[] {
  switch (lang) {
    case "python":
      return ["python3", codeFile];
    case "r":
      return ["Rscript", "--no-save", "--no-restore", codeFile];
    case "shell":
      return ["bash", codeFile];
    case "sql":
      // -bail: stop at the first error and exit non-zero, so a failed statement is a failure.
      return ["sqlite3", "-bail", "-batch", SQL_DATABASE, `.read ${codeFile}`];
  }
}
