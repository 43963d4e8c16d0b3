"""The one way this package starts worker processes.

Parsing CSVs, matching structures and fingerprinting all run in worker pools while the parent
usually has torch loaded, and torch keeps OpenMP threads alive. ``fork`` copies a threaded
process with its locks in whatever state they were, which can hang a worker forever; so every
pool uses ``forkserver`` (workers forked from a small, single-threaded server process that
imported only what it was told to preload) where the platform has it, and ``spawn`` elsewhere.

Every worker (:func:`run_in_pool`), and the same work run in-process (:func:`run_inline`), keeps
numpy/scipy's BLAS to one thread (:func:`limit_blas_threads`): the work is thousands of tiny matrix operations, and an
OpenBLAS pool left at its default busy-waits between them.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing.context import BaseContext
from typing import Any


def usable_cpus() -> int:
    """CPUs this process may run on: the affinity mask where the OS has one (a batch job or
    ``taskset`` often grants fewer cores than the machine has), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(requested: int | None, n_tasks: int) -> int:
    """Worker processes for ``n_tasks`` tasks: ``requested`` (all usable CPUs when ``None`` or
    0), never more than there are tasks and never fewer than one."""
    return max(1, min(requested or usable_cpus(), max(n_tasks, 1)))


def limit_blas_threads(n: int = 1) -> contextlib.AbstractContextManager[Any]:
    """Cap the BLAS libraries loaded in this process (numpy's, scipy's OpenBLAS) at ``n`` threads.

    Why: OpenBLAS's idle threads spin for a while after every call, and ASE's optimisers and
    pymatgen's matcher call BLAS on tiny arrays thousands of times a second, so the pool never
    sleeps. Measured on 2026-11-30: a one-worker CHGNet relaxation kept a second thread at ~60 %
    of a core and slowed a training beside it by ~40 %. Threads buy nothing on such arrays.

    The limit applies at once; use the result as a context manager to restore the previous
    limits on exit (inline loops in a user's process), or ignore it to keep the limit (worker
    processes). torch's own threads are not touched. Without ``threadpoolctl`` this does nothing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency; kept optional so import never fails
        return contextlib.nullcontext()
    # A limit only reaches libraries already loaded, and scipy brings its own OpenBLAS (the one
    # that spun), often loaded lazily by the first optimiser step or match: load both first.
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401

    return threadpool_limits(limits=n, user_api="blas")


def _init_worker(initializer: Callable[[], None] | None) -> None:
    limit_blas_threads()
    if initializer is not None:
        initializer()


def worker_initializer(initializer: Callable[[], None] | None = None) -> Callable[[], None]:
    """The initializer every pool of this package uses: one BLAS thread, then ``initializer``."""
    return functools.partial(_init_worker, initializer)


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


def run_inline(fn: Callable[..., Any], tasks: Sequence[tuple], bar: Any) -> list[Any]:
    """``[fn(*task) for task in tasks]`` in this process, under :func:`limit_blas_threads`: the
    one-worker counterpart of :func:`run_in_pool`, so both paths run the same BLAS setting."""
    results = []
    with limit_blas_threads():
        for task in tasks:
            results.append(fn(*task))
            bar.update(1)
    return results


def run_in_pool(fn: Callable[..., Any], tasks: Sequence[tuple], workers: int, bar: Any,
                initializer: Callable[[], None] | None = None, preload: Sequence[str] = (),
                on_error: Callable[[int, BaseException], Any] | None = None) -> list[Any]:
    """``[fn(*task) for task in tasks]`` in worker processes, in task order.

    ``bar`` (a tqdm bar) advances as tasks finish. Each worker runs with one BLAS thread, then
    ``initializer``. A task that raises gives ``on_error(i, exc)``
    as its result when ``on_error`` is set; otherwise the error propagates. On any error or
    Ctrl-C the queued tasks are cancelled instead of finished.
    """
    results: list[Any] = [None] * len(tasks)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp_context(preload),
                               initializer=worker_initializer(initializer))
    try:
        futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                results[i] = future.result()
            except Exception as exc:
                if on_error is None:
                    raise
                results[i] = on_error(i, exc)
            bar.update(1)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results
