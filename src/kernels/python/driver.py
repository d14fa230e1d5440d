"""Corral's Python kernel: IPython in process, driven by the sandbox's supervisor.

The supervisor starts this file once per context (lazily, on the context's first call)
and talks to it over two pipes (docs/protocol.md, "Kernels"):

  fd 3  requests, each a u32 big-endian length and a JSON object {"code", "env"}
  fd 4  events, each a u32 big-endian length, a u8 type (1 event, 2 end) and JSON

stdout and stderr are the real fds 1 and 2, unbuffered, so that print(), C extensions
and `!cmd` subprocesses all stream as they write. Rich output (the value of the last
expression, display(), inline matplotlib figures) and errors are events; END closes
each call. A call's deadline arrives as SIGINT (a KeyboardInterrupt in the cell).
"""

import importlib
import io
import os
import signal
import sys

from corral_frames import END, EVENT, cap_bundle, keep_pipes_private, read_request
from corral_frames import send as _send

_INT = {signal.SIGINT}


def send(kind, obj):
    # Objects JSON cannot hold (in metadata, say) go as their repr.
    _send(kind, obj, default=repr)


def make_shell():
    # IPython's profile directory (startup notes, caches) is the kernel's, not the user's:
    # keep it off the writable layer, in the sandbox's own /dev/shm.
    os.environ.setdefault("IPYTHONDIR", "/dev/shm/.corral-ipython")
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class Hook(DisplayHook):
        """The value of a cell's last expression: an execute_result."""

        def start_displayhook(self):
            pass

        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            send(EVENT, {"type": "result", "data": cap_bundle(format_dict), "metadata": md_dict or {}})

        def finish_displayhook(self):
            sys.stdout.flush()

    class Publisher(DisplayPublisher):
        """display() and inline figures: display_data."""

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            sys.stdout.flush()
            send(EVENT, {"type": "display", "data": cap_bundle(data), "metadata": metadata or {}})

        def clear_output(self, wait=False):
            send(EVENT, {"type": "clear_output", "wait": wait})

    from traitlets.config import Config

    # History stays in memory: a history.sqlite in the writable layer would be a file
    # change of every call, and nothing reads it after the session.
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(
        config=config,
        displayhook_class=Hook, display_pub_class=Publisher, colors="NoColor", autocall=0
    )

    def show_traceback(etype, evalue, stb):
        send(
            EVENT,
            {
                "type": "error",
                "ename": getattr(etype, "__name__", str(etype)),
                "evalue": str(evalue),
                "traceback": list(stb),
            },
        )

    shell._showtraceback = show_traceback
    # `!cmd` runs with the kernel's own stdout and stderr (plain pipes to the supervisor),
    # as in a notebook: IPython's default goes through a pseudo-terminal, which would turn
    # every newline into CRLF and merge the two streams.
    shell.system = shell.system_raw
    # There is no GUI event loop to hook: `%matplotlib inline` (and `%matplotlib` alone)
    # only selects the inline backend, whose figures arrive through display().
    shell.enable_gui = lambda gui=None: None
    return shell


def run(shell, request):
    env = request.get("env") or {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    count = shell.execution_count
    status = "error"
    try:
        # A deadline that fired between calls was already answered: forget it.
        while signal.sigtimedwait(_INT, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _INT)
        try:
            silent = request.get("silent") is True
            result = shell.run_cell(request["code"], store_history=not silent, silent=silent)
            status = "ok" if result.success else "error"
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, _INT)
    except KeyboardInterrupt:
        # The interrupt landed outside the cell's own code (IPython catches it there).
        send(EVENT, {"type": "error", "ename": "KeyboardInterrupt", "evalue": "", "traceback": []})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.stdout.flush()
        sys.stderr.flush()
        # A package installed during the call (pip, %pip) must import in the next one.
        importlib.invalidate_caches()
    send(END, {"executionCount": count, "status": status})


def main():
    signal.pthread_sigmask(signal.SIG_BLOCK, _INT)
    keep_pipes_private()
    # Unbuffered text streams on the real pipes: output streams as it is written.
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", write_through=True)
    sys.path[0] = ""  # like a notebook: modules in the working directory import
    # Figures as a notebook shows them: the inline backend displays each figure once, on
    # plt.show() or when the cell ends with it open. The image's default (Agg, for
    # scripts) gives way to it; a backend the caller chose is kept. Children inherit it,
    # as they do from a Jupyter kernel.
    if os.environ.get("MPLBACKEND", "").lower() in ("", "agg"):
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    sys.argv = [""]
    shell = make_shell()
    send(EVENT, {"type": "ready", "pid": os.getpid()})
    while True:
        try:
            request = read_request()
        except EOFError:
            return
        run(shell, request)


if __name__ == "__main__":
    main()
