"""Closed-loop episodes on spawned worker processes (``--workers`` of eval, attack, collect).

Each worker builds one *runner* (its envs and its loaded policy) from keyword arguments, sets
torch to one intra-op thread, and runs tasks from a queue until it meets ``None``; the parent
receives each episode's record as it ends and hands it to a callback (which appends it to the
run folder), so a killed run loses at most the episodes in flight. Episodes depend only on
their seeds and every process runs torch on one thread, so the records do not depend on the
number of workers or on which worker ran an episode. A worker whose parent died stops at its
next queue poll (0.5 s).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from robot_refusal.errors import RobotRefusalError


class Runner(Protocol):
    """What a worker builds: ``run(*task) -> record`` for each task, then ``close()``."""

    def run(self, *task: Any) -> dict[str, Any]:
        """One episode; its JSON-ready record."""
        ...

    def close(self) -> None:
        """Release the envs."""
        ...


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the context (the rollouts' numeric setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def describe(task: Sequence[Any]) -> str:
    """A task as ``a:b``: its episode specs by ``episode_id``, other parts as they print."""
    return ":".join(str(getattr(part, "episode_id", part)) for part in task)


def _worker_main(
    make_runner: Callable[..., Runner], init: dict[str, Any], tasks: Any, results: Any, parent: int
) -> None:  # pragma: no cover - runs in a spawned process
    """Worker process: build the runner, then run tasks until ``None`` or the parent's death."""
    torch.set_num_threads(1)
    try:
        runner = make_runner(**init)
    except Exception as e:
        results.put(("error", None, f"{type(e).__name__}: {e}"))
        return
    try:
        while True:
            if os.getppid() != parent:  # the parent died (kill -9): stop
                return
            try:
                task = tasks.get(timeout=0.5)
            except queue.Empty:
                continue
            if task is None:
                return
            try:
                rec = runner.run(*task)
            except Exception as e:
                tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
                results.put(("error", describe(task), f"{type(e).__name__}: {e} ({tb})"))
                return
            results.put(("ok", None, rec))
    finally:
        runner.close()


def run_pool(
    make_runner: Callable[..., Runner],
    init: dict[str, Any],
    todo: Sequence[tuple[Any, ...]],
    workers: int,
    on_record: Callable[[dict[str, Any]], None],
    bar: tqdm,
    error: type[RobotRefusalError],
    saved: Callable[[], int],
) -> None:
    """Run every task of ``todo`` on ``min(workers, len(todo))`` spawned processes.

    Args:
        make_runner: A module-level class or function (pickled by reference) that builds a
            :class:`Runner` from ``init``.
        init: Its keyword arguments (picklable).
        todo: The tasks; worker calls ``runner.run(*task)``.
        workers: Processes to start (>= 1).
        on_record: Called in this process with each record, in the order they finish.
        bar: Advanced by one per record.
        error: The error type to raise (e.g. :class:`~robot_refusal.errors.AttackError`).
        saved: How many records are saved so far (for the error message).

    Raises:
        ``error``: A worker raised (naming the task and the exception) or died; the records
            received before stay saved, and the message says how many and to ``--resume``.
    """
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(make_runner, init, tasks, results, os.getpid()),
            daemon=True,
        )
        for _ in range(min(workers, len(todo)))
    ]
    for p in procs:
        p.start()
    for task in todo:
        tasks.put(task)
    for _ in procs:
        tasks.put(None)
    remaining = len(todo)
    try:
        while remaining:
            try:
                kind, where, payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or not any(p.is_alive() for p in procs):
                    raise error(
                        f"a worker process died (exit codes {dead or [p.exitcode for p in procs]})"
                        f"; {saved()} episodes are saved, rerun with --resume"
                    ) from None
                continue
            if kind == "error":
                raise error(
                    f"worker failed{' on ' + where if where else ''}: {payload}; "
                    f"{saved()} episodes are saved, rerun with --resume"
                )
            on_record(payload)
            bar.update(1)
            remaining -= 1
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)


def run_tasks(
    make_runner: Callable[..., Runner],
    init: dict[str, Any],
    todo: Sequence[tuple[Any, ...]],
    workers: int,
    on_record: Callable[[dict[str, Any]], None],
    bar: tqdm,
    error: type[RobotRefusalError],
    saved: Callable[[], int],
) -> None:
    """Run every task of ``todo``: on :func:`run_pool` when ``workers`` > 1 and there are two
    tasks or more, else in this process with one runner and torch on one thread (the numeric
    setting of the workers, so the records do not depend on ``workers``). Arguments and
    errors as in :func:`run_pool`; in this process the runner's own exceptions propagate."""
    if not todo:
        return
    if workers > 1 and len(todo) > 1:
        run_pool(make_runner, init, todo, workers, on_record, bar, error, saved)
        return
    with one_thread():
        runner = make_runner(**init)
        try:
            for task in todo:
                on_record(runner.run(*task))
                bar.update(1)
        finally:
            runner.close()
