"""Worker processes that do not outlive the process that started them.

A long worker (a phono3py κ calculation takes seconds to minutes) keeps computing after its parent
was killed with SIGTERM / SIGKILL (``kill <pid>``, a CI timeout, an OOM kill): Python's
``ProcessPoolExecutor`` only stops its workers on a clean shutdown or a Ctrl-C that reaches the
whole process group. :func:`die_with_parent`, called in the worker (e.g. as or inside a pool's
``initializer``), asks the Linux kernel to send the worker SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``). Elsewhere it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

#: ``PR_SET_PDEATHSIG`` of ``<linux/prctl.h>``.
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have this process receive ``sig`` when its parent process dies (Linux).

    Call it in the child. The kernel ties the signal to the parent *thread* that created the
    child; ``ProcessPoolExecutor`` with a spawn context starts its workers from the thread that
    submits work, normally the main thread.

    Returns:
        True when armed; False on another platform or if ``prctl`` failed (logged).
    """
    if not sys.platform.startswith("linux"):
        log.debug("die_with_parent: not on Linux; workers may outlive a killed parent")
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.warning("die_with_parent: prctl failed (errno %d)", ctypes.get_errno())
        return False
    if os.getppid() != parent:  # the parent died before the call: act now
        os.kill(os.getpid(), sig)
    return True


__all__ = ["die_with_parent"]
