"""Corral's SQL kernel: one SQLite connection per context, driven by the supervisor.

Started as `python3 THIS_FILE DATABASE` (docs/protocol.md, "Kernels"):

  fd 3  requests, each a u32 big-endian length and a JSON object {"code", "env"}
  fd 4  events, each a u32 big-endian length, a u8 type (1 event, 2 end) and JSON

Python's sqlite3 module rather than the sqlite3 CLI: the connection lives across calls,
each result set comes back typed (numbers stay numbers), errors carry SQLite's own
message, and a deadline can stop a running statement without losing the connection.

A call's code is split into statements (sqlite3.complete_statement decides where one
ends, so semicolons in strings, comments and trigger bodies are not ends) and dot-commands
(a line starting with "." where no statement is pending, as in the CLI). They run in
order; the first error ends the call. Every statement that returns rows sends its result
set: the last statement's as `result`, earlier ones as `display`. The connection is in
autocommit mode, so each statement commits by itself; a transaction the code opened with
BEGIN and left open is committed at the end of the call, or rolled back if the call
failed: no transaction spans two calls.

Dot-commands: `.import [--csv] [--skip N] FILE TABLE` (CSV into TABLE, created with TEXT
columns named by the header row if it does not exist), `.tables [PATTERN]`,
`.schema [PATTERN]`.

The deadline arrives as SIGINT. Python runs a signal handler only between bytecodes, and
none run while SQLite executes a statement; a progress handler gives the interpreter that
chance every few thousand virtual-machine steps, and the SIGINT handler then calls
connection.interrupt(): the statement ends with "interrupted", the connection lives on.
"""

import base64
import csv
import html
import math
import os
import shlex
import signal
import sqlite3
import sys

from corral_frames import END, EVENT, cap_bundle, keep_pipes_private, read_request
from corral_frames import send as _send

# Rows fetched from one result set (all of them go into application/json) and rows shown
# in its text/plain and text/html tables.
FETCH_MAX_ROWS = 10_000
DISPLAY_MAX_ROWS = 1_000
PROGRESS_STEPS = 10_000
TYPES_VIEW = "corral_result_columns__"

_INT = {signal.SIGINT}


# ---- splitting (pure) ----------------------------------------------------------------


def skip_blank(text, i=0):
    """The index of the first character at or after i that is not whitespace or a
    comment. An unterminated block comment runs to the end, as in SQLite."""
    n = len(text)
    while i < n:
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            break
    return i


def is_blank(text):
    return skip_blank(text) == len(text)


def _complete_end(buf):
    """The end of the first complete statement in buf (just after its semicolon), or None."""
    i = buf.find(";")
    while i >= 0:
        if sqlite3.complete_statement(buf[: i + 1]):
            return i + 1
        i = buf.find(";", i + 1)
    return None


def split_script(text):
    """The code of a call as [(kind, text, line)]: kind "sql" (one statement, its
    semicolon included) or "dot" (a dot-command line, stripped); line is where it starts.
    Empty statements (only blanks, comments or a lone ";") are dropped."""
    items = []
    buf, buf_at = "", 0  # the pending statement text and its offset in `text`
    offset = 0

    def line_of(pos):
        return text.count("\n", 0, pos) + 1

    def emit(stmt, at):
        start = skip_blank(stmt)
        if not is_blank(stmt[start:].rstrip().rstrip(";")):
            items.append(("sql", stmt, line_of(at + start)))

    # Lines end at "\n" only (str.splitlines would also break at \r, \f, U+2028...).
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    for line in lines:
        if is_blank(buf) and line.lstrip().startswith("."):
            items.append(("dot", line.strip(), line_of(offset)))
            buf, buf_at = "", offset + len(line)
        else:
            if buf == "":
                buf_at = offset
            buf += line
            end = _complete_end(buf)
            while end is not None:
                emit(buf[:end], buf_at)
                buf, buf_at = buf[end:], buf_at + end
                end = _complete_end(buf)
        offset += len(line)
    if not is_blank(buf):
        emit(buf, buf_at)
    return items


# ---- result sets (pure) --------------------------------------------------------------


def storage_class(value):
    if value is None:
        return None
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "real"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "blob"
    return "text"


def column_types(declared, rows, ncols):
    """Each column's declared type where SQLite has one, else the storage class of its
    values ("integer", "real", "text", "blob"; several joined by "|"; None if all NULL)."""
    out = []
    for i in range(ncols):
        decl = declared[i] if declared and i < len(declared) else ""
        if decl:
            out.append(decl)
            continue
        classes = sorted({c for c in (storage_class(r[i]) for r in rows) if c is not None})
        out.append("|".join(classes) if classes else None)
    return out


def json_value(v):
    """A value as JSON keeps it: numbers as numbers; non-finite reals and blobs as text."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    return v


def cell_text(v):
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        return "X'" + b[:32].hex().upper() + ("...'" if len(b) > 32 else "'")
    return str(v)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def text_table(names, rows, note=""):
    """An aligned table: a header, dashes, then the rows; numbers to the right."""
    cells = [[cell_text(v) for v in r] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    right = [bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows) for i in range(len(names))]

    def fmt(values):
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return "  ".join(parts).rstrip()

    lines = [fmt(names), "  ".join("-" * w for w in widths)]
    lines += [fmt(c) for c in cells]
    if note:
        lines.append(note)
    return "\n".join(lines)


def html_table(names, rows, note=""):
    esc = html.escape
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{esc(cell_text(v))}</td>" for v in r) + "</tr>" for r in rows
    )
    if body:
        body += "\n"
    out = f'<table class="dataframe">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n'
    if note:
        out += f"<p>{esc(note)}</p>\n"
    return out


def result_bundle(names, types, rows, more):
    """The MIME bundle of one result set; `more` says rows exist beyond those fetched."""
    shown = rows[:DISPLAY_MAX_ROWS]
    if len(rows) > len(shown):
        note = f"... {len(rows) - len(shown)} more rows not shown" + (" (and more not fetched)" if more else "")
    elif more:
        note = f"... more rows not fetched (at most {FETCH_MAX_ROWS})"
    else:
        note = ""
    table = {
        "columns": [{"name": n, "type": t} for n, t in zip(names, types)],
        "rows": [[json_value(v) for v in r] for r in rows],
    }
    if more:
        table["truncated"] = True
    return {
        "application/json": table,
        "text/html": html_table(names, shown, note),
        "text/plain": text_table(names, shown, note),
    }


# ---- the kernel ----------------------------------------------------------------------


def send(kind, obj):
    _send(kind, obj, allow_nan=False)


class Interrupted(Exception):
    pass


class DotCommandError(Exception):
    pass


def error_name(e):
    t = type(e)
    return f"{t.__module__}.{t.__name__}" if t.__module__ == "sqlite3" else t.__name__


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


class Kernel:
    def __init__(self, database):
        self.database = database
        self.count = 0
        self.interrupted = False
        self.conn = None
        self.open_error = None
        try:
            self.conn = sqlite3.connect(database, isolation_level=None)
            # Text that is not valid UTF-8 still comes back (with U+FFFD), not as an error.
            self.conn.text_factory = lambda b: b.decode("utf-8", "replace")
            self.conn.set_progress_handler(self._tick, PROGRESS_STEPS)
        except sqlite3.Error as e:
            self.open_error = e

    @staticmethod
    def _tick():
        # Does nothing itself: calling into Python lets a pending SIGINT handler run.
        return 0

    def on_sigint(self, signum, frame):
        self.interrupted = True
        if self.conn is not None:
            self.conn.interrupt()

    def check_interrupt(self):
        if self.interrupted:
            raise Interrupted()

    # -- statements --

    def declared_types(self, stmt):
        """Declared types of a query's columns: SQLite gives them for a view's columns
        (empty for expressions), so the query is made a temporary view for a moment.
        None when it cannot be one (not a plain query)."""
        start = skip_blank(stmt)
        word = stmt[start : start + 6].lower()
        if not (word.startswith("select") or word.startswith("with") or word.startswith("values")):
            return None
        body = stmt[start:].rstrip()
        if body.endswith(";"):
            body = body[:-1]
        cur = self.conn.cursor()
        try:
            cur.execute(f"CREATE TEMP VIEW {TYPES_VIEW} AS {body}\n")
        except sqlite3.Error:
            return None
        try:
            return [row[2] for row in cur.execute(f"PRAGMA temp.table_info({TYPES_VIEW})")]
        except sqlite3.Error:
            return None
        finally:
            try:
                cur.execute(f"DROP VIEW temp.{TYPES_VIEW}")
            except sqlite3.Error:
                pass

    def run_statement(self, stmt, last):
        cur = self.conn.cursor()
        cur.execute(stmt)
        if cur.description is None:
            return
        names = [d[0] for d in cur.description]
        rows = cur.fetchmany(FETCH_MAX_ROWS + 1)
        more = len(rows) > FETCH_MAX_ROWS
        rows = rows[:FETCH_MAX_ROWS]
        cur.close()
        types = column_types(self.declared_types(stmt), rows, len(names))
        bundle = cap_bundle(result_bundle(names, types, rows, more))
        send(EVENT, {"type": "result" if last else "display", "data": bundle, "metadata": {}})

    # -- dot-commands --

    def dot(self, line):
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise DotCommandError(f"{line}: {e}") from None
        name, args = words[0], words[1:]
        if name == ".import":
            self.dot_import(args)
        elif name == ".tables":
            self.dot_tables(args)
        elif name == ".schema":
            self.dot_schema(args)
        else:
            raise DotCommandError(
                f'unknown dot-command "{name}": this kernel supports .import, .tables and .schema'
            )

    def dot_tables(self, args):
        pattern = args[0] if args else "%"
        rows = self.conn.execute(
            "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' "
            "AND name LIKE ? ORDER BY name",
            (pattern,),
        ).fetchall()
        for (name,) in rows:
            print(name, flush=True)

    def dot_schema(self, args):
        pattern = args[0] if args else "%"
        rows = self.conn.execute(
            "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
            "AND (name LIKE ? OR tbl_name LIKE ?) ORDER BY rowid",
            (pattern, pattern),
        ).fetchall()
        for (text,) in rows:
            print(f"{text};", flush=True)

    def dot_import(self, args):
        usage = "usage: .import [--csv] [--skip N] FILE TABLE"
        skip, rest, i = 0, [], 0
        while i < len(args):
            a = args[i]
            if a == "--csv":
                pass
            elif a == "--skip" and i + 1 < len(args) and args[i + 1].isdigit():
                skip = int(args[i + 1])
                i += 1
            elif a.startswith("-"):
                raise DotCommandError(f".import: unknown option {a}; {usage}")
            else:
                rest.append(a)
            i += 1
        if len(rest) != 2:
            raise DotCommandError(f".import: {usage}")
        path, table = rest
        try:
            f = open(path, newline="", encoding="utf-8-sig")
        except OSError as e:
            raise DotCommandError(f".import: cannot open {path}: {e.strerror}") from None
        with f:
            reader = csv.reader(f)
            for _ in range(skip):
                next(reader, None)
            exists = self.conn.execute(
                "SELECT 1 FROM pragma_table_info(?) LIMIT 1", (table,)
            ).fetchone() is not None
            if exists:
                ncols = len(self.conn.execute(f"PRAGMA table_info({quote_ident(table)})").fetchall())
            else:
                header = next(reader, None)
                if not header:
                    raise DotCommandError(f".import: {path} is empty: no header row to name the columns")
                cols = ", ".join(f"{quote_ident(h)} TEXT" for h in header)
                ncols = len(header)
            marks = ", ".join("?" * ncols)
            insert = f"INSERT INTO {quote_ident(table)} VALUES ({marks})"

            def rows():
                for row in reader:
                    self.check_interrupt()
                    if len(row) == ncols:
                        yield row
                    elif row:
                        what = "filling the rest with NULL" if len(row) < ncols else "extras ignored"
                        print(
                            f"{path}:{reader.line_num}: expected {ncols} columns but found {len(row)} - {what}",
                            file=sys.stderr,
                            flush=True,
                        )
                        yield (row + [None] * ncols)[:ncols]

            # One savepoint: a transaction of its own in autocommit mode (fast, and all
            # or nothing), nested in the code's own transaction if one is open.
            self.conn.execute("SAVEPOINT corral_import")
            try:
                if not exists:
                    self.conn.execute(f"CREATE TABLE {quote_ident(table)} ({cols})")
                self.conn.executemany(insert, rows())
            except BaseException:
                self.conn.execute("ROLLBACK TO corral_import")
                self.conn.execute("RELEASE corral_import")
                raise
            self.conn.execute("RELEASE corral_import")

    # -- a call --

    def send_error(self, ename, evalue, traceback):
        send(EVENT, {"type": "error", "ename": ename, "evalue": evalue, "traceback": traceback})

    def run(self, request):
        self.count += 1
        env = request.get("env") or {}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        status = "ok"
        try:
            if self.conn is None:
                e = self.open_error
                self.send_error(error_name(e), str(e), [f"cannot open the database {self.database}: {e}"])
                status = "error"
            else:
                status = self.run_code(request.get("code") or "")
        except Exception as e:  # a fault of the driver itself: the call ends, the kernel lives
            self.send_error("CorralKernelError", f"{type(e).__name__}: {e}", [])
            status = "error"
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        send(END, {"executionCount": self.count, "status": status})

    def run_code(self, code):
        # A deadline that fired after the previous call ended was already answered.
        while signal.sigtimedwait(_INT, 0) is not None:
            pass
        self.interrupted = False
        items = split_script(code)
        status = "ok"
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _INT)
        try:
            for n, (kind, text, line) in enumerate(items):
                try:
                    self.check_interrupt()
                    if kind == "dot":
                        self.dot(text)
                    else:
                        self.run_statement(text, n == len(items) - 1)
                except Interrupted:
                    self.send_error("KeyboardInterrupt", "interrupted", [f"interrupted before line {line}"])
                    status = "error"
                    break
                except (sqlite3.Error, sqlite3.Warning, DotCommandError, csv.Error, ValueError) as e:
                    where = f"line {line}: {text.strip()[:200]}"
                    tb = [f"{error_name(e)}: {e}", f"in {'dot-command' if kind == 'dot' else 'statement'} at {where}"]
                    code_name = getattr(e, "sqlite_errorname", None)
                    if code_name:
                        tb[0] += f" ({code_name})"
                    self.send_error(error_name(e), str(e), tb)
                    status = "error"
                    break
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, _INT)
            self.interrupted = False
            self.finish_transaction(status)
        return status

    def finish_transaction(self, status):
        """No transaction outlives its call: commit what the code left open, or roll it
        back if the call failed."""
        if not self.conn.in_transaction:
            return
        try:
            if status == "ok":
                self.conn.commit()
            else:
                self.conn.rollback()
                print("corral: the open transaction was rolled back (the call failed)", file=sys.stderr, flush=True)
        except sqlite3.Error as e:
            self.send_error(error_name(e), str(e), [f"{error_name(e)}: {e}", "at the end of the call (COMMIT)"])
            try:
                self.conn.rollback()
            except sqlite3.Error:
                pass


def main():
    keep_pipes_private()
    signal.pthread_sigmask(signal.SIG_BLOCK, _INT)
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    kernel = Kernel(sys.argv[1] if len(sys.argv) > 1 else "/work/db.sqlite")
    signal.signal(signal.SIGINT, kernel.on_sigint)
    send(EVENT, {"type": "ready", "pid": os.getpid()})
    while True:
        try:
            request = read_request()
        except EOFError:
            return
        kernel.run(request)


if __name__ == "__main__":
    main()
