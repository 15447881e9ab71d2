"""A child process that must not outlive its parent: the parent holds the other end of the
child's standard input, and the kernel closes it whatever way the parent ends (SIGKILL
included), so end-of-file on standard input means the parent has gone. Used by the private
local server (`--exit-with-stdin`) and by the exports a server runs in a child process."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def when_stdin_closes(callback: Callable[[], None]) -> None:
    """Call `callback` (on a daemon thread) once standard input reaches end-of-file. Reads the
    raw file descriptor: a buffered reader's lock, held by this thread, would abort the
    interpreter at exit."""

    def watch() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        callback()

    threading.Thread(target=watch, name="stdin-watchdog", daemon=True).start()
