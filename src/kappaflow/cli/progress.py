"""A status line on stderr while the CLI does something slow (loading the model: ~1 min on CPU).

On a terminal a spinner with the elapsed seconds redraws in place and is replaced by a final
``<message>: done in N s`` line. When stderr is not a terminal (pipes, CI logs, tests) nothing
is written: there stderr carries only warnings and errors, one per line. stdout is never
touched, so ``--json`` output stays machine-readable.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

FRAMES = "|/-\\"


class Spinner:
    """Context manager: ``with Spinner("loading model"): ...`` shows progress on stderr.

    Args:
        message: what is being done, e.g. ``loading model models:/kappaflow-kappa@champion``.
        stream: where to write (default ``sys.stderr``).
        interval_s: redraw period on a terminal, s.
    """

    def __init__(self, message: str, stream: TextIO | None = None, interval_s: float = 0.2):
        self.message = message
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def _spin(self) -> None:
        k = 0
        while not self._stop.wait(self.interval_s):
            k += 1
            elapsed = time.monotonic() - self._t0
            self.stream.write(f"\r{FRAMES[k % len(FRAMES)]} {self.message} … {elapsed:.0f} s")
            self.stream.flush()

    def __enter__(self) -> Spinner:
        self._t0 = time.monotonic()
        if self.tty:
            self.stream.write(f"{FRAMES[0]} {self.message} …")
            self.stream.flush()
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join()
        elapsed = time.monotonic() - self._t0
        outcome = "failed" if exc_type is not None else "done"
        self.stream.write(f"\r\033[K{self.message}: {outcome} in {elapsed:.0f} s\n")
        self.stream.flush()
