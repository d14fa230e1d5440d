"""The kernel side of Corral's kernel pipes, shared by the Python and SQL drivers.

Installed beside them as /.corral/kernels/corral_frames.py (docs/protocol.md, "Kernels"):

  fd 3  requests, each a u32 big-endian length and a JSON object {"code", "env", ...}
  fd 4  events, each a u32 big-endian length, a u8 type (1 event, 2 end) and JSON
"""

import json
import os
import signal
import struct

REQ_FD, EVT_FD = 3, 4
EVENT, END = 1, 2
# A MIME entry larger than this is replaced by a marker: one huge output must not hold
# the session's memory or the host's (the supervisor caps a frame at 16 MiB).
MAX_MIME_BYTES = 8 * 1024 * 1024

_INT = {signal.SIGINT}


def keep_pipes_private():
    """The pipes are the driver's alone: a program the code starts (os.system, `!cmd`)
    must not inherit them and forge frames or read requests."""
    os.set_inheritable(REQ_FD, False)
    os.set_inheritable(EVT_FD, False)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def send(kind, obj, **dump_options):
    """One frame on the event pipe. SIGINT is held off while writing, so that a deadline
    never leaves half a frame behind (the supervisor would then end the context)."""
    data = json.dumps(obj, ensure_ascii=False, **dump_options).encode("utf-8", "surrogatepass")
    frame = struct.pack(">IB", len(data), kind) + data
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _INT)
    try:
        _write_all(EVT_FD, frame)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _size(value):
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes):
        return len(value)
    return len(json.dumps(value, default=repr))


def cap_bundle(data):
    """Drop MIME entries too large to carry; say so in text/plain."""
    out, dropped = {}, []
    for mime, value in data.items():
        size = _size(value)
        if size > MAX_MIME_BYTES:
            dropped.append(f"{mime} ({size} bytes)")
        else:
            out[mime] = value
    if dropped:
        note = f"[corral: output too large, dropped: {', '.join(dropped)}; limit {MAX_MIME_BYTES} bytes]"
        out["text/plain"] = (out.get("text/plain", "") + "\n" + note).strip()
    return out


def _read_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(REQ_FD, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def read_request():
    """The next request; EOFError when the host closed the pipe."""
    (length,) = struct.unpack(">I", _read_exact(4))
    return json.loads(_read_exact(length))
