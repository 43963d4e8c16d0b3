"""The one way this package starts worker processes.

Parsing CSVs, matching structures and fingerprinting all run in worker pools while the parent
usually has torch loaded, and torch keeps OpenMP threads alive. ``fork`` copies a threaded
process with its locks in whatever state they were, which can hang a worker forever; so every
pool uses ``forkserver`` (workers forked from a small, single-threaded server process that
imported only what it was told to preload) where the platform has it, and ``spawn`` elsewhere.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from multiprocessing.context import BaseContext


def mp_context(preload: Sequence[str] = ()) -> BaseContext:
    """Start-method context for worker pools: forkserver where available, else spawn.

    ``preload``: modules the fork server imports once (e.g. ``["diffcsp.metrics"]``), so each
    worker starts with pymatgen already imported instead of paying seconds for it. The server
    is shared by the whole process and starts on first use, so only the first caller's preload
    list takes effect; later ones only cost a little import time in their workers.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        if preload:
            ctx.set_forkserver_preload(list(preload))
        return ctx
    return multiprocessing.get_context("spawn")
