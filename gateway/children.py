"""The processes a replica starts end when it ends.

The body parser's child process (validation/offload.py) outlived a SIGKILLed replica for
hours, and with it the multiprocessing resource tracker that stays while any of its
processes lives. A child calls ``end_with_parent`` first: a thread watches its parent and
ends the child once the parent is gone (it was handed to another). A thread rather than
the kernel's parent-death signal, which fires when the parent *thread* that started the
child ends, not the process.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Final

_POLL_S: Final = 0.5


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_POLL_S)
    os._exit(1)  # nothing of the replica's is left to finish


def end_with_parent(parent: int) -> None:
    """End this process when process ``parent`` (the one that started it) ends."""
    if os.getppid() != parent:  # it ended before this process got here
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="end-with-parent", daemon=True).start()
