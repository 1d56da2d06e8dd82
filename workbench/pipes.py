"""Printing that survives its reader going away: `python -m workbench tune ... | head -1`.

When the reader of stdout (or stderr) closes the pipe, the next write raises BrokenPipeError. Inside a
run's progress callback that would end the run as failed; here the stream is pointed at os.devnull
instead, so printing stops and the command carries on (a run trains to the end and saves).
"""
from __future__ import annotations

import contextlib
import io
import os
import sys


class PipeSafe:
    """A text stream whose writes and flushes go nowhere once its pipe is closed."""

    def __init__(self, stream):
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        return len(text) if self._gone else self._guard(self._stream.write, text)

    def flush(self) -> None:
        if not self._gone:
            self._guard(self._stream.flush)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except BrokenPipeError:
            try:  # what is still buffered, and every later write, goes to devnull
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._stream.fileno())
                os.close(devnull)
                return fn(*args)
            except (OSError, ValueError, io.UnsupportedOperation):
                self._gone = True
                return len(args[0]) if args else None

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def survive_closed_pipes():
    """sys.stdout and sys.stderr as PipeSafe streams while the block runs (flushed before they are put back,
    so nothing left in a buffer breaks at exit)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PipeSafe(saved[0]), PipeSafe(saved[1])
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, PipeSafe):
                stream.flush()
        sys.stdout, sys.stderr = saved
