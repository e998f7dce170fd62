"""The demo's process-pool jobs: training, held-out evaluation and test-time re-reasoning, each in
a spawned worker process with ONE torch thread (two busy threads on 2 cores were ~40× slower).

Thread counts are process-global state, so they are set only where they belong:
``job_env`` is the pool's ``initializer`` and runs in each worker before its first job, never
in the parent; the parent's own torch work (building the cold start) runs inside ``torch_threads``,
which restores the count afterwards. This module imports nothing heavy at the top: a worker
imports it to unpickle its jobs before ``job_env`` has set ``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any

__all__ = ["eval_job", "job_env", "rereason_job", "run_parallel", "torch_threads", "train_job"]


def job_env() -> None:
    """Initializer of every demo worker process: one OpenMP and one torch thread."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``n`` torch threads in THIS process while the block runs; the previous count afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_job(cfg_dict: dict[str, Any]) -> dict[str, float]:
    from ..config import config_from_dict
    from ..rl.trainer import train

    return train(config_from_dict(cfg_dict, "demo"))


def eval_job(model_dir: str, data_dir: str, out_json: str, limit: int, samples: int, tokens: int):
    from ..eval.protocol import evaluate_heldout

    res = evaluate_heldout(
        model_dir,
        data_dir,
        out_json,
        limit=limit,
        samples=samples,
        max_new_tokens=tokens,
        progress=False,  # the demo's own bar counts jobs
    )
    return res["means"]


def rereason_job(
    model_dir: str, data_dir: str, eval_json: str, limit: int, mode: str, tokens: int, out_json: str
) -> dict:
    """Test-time re-reasoning (paper Fig. 5) from the model's greedy held-out answers, at T = 1
    (eval/rereason.py: the same code as ``ivr eval --rereason``)."""
    from ..eval.rereason import rereason_heldout

    return rereason_heldout(
        model_dir, data_dir, eval_json, out_json, limit=limit, mode=mode, max_new_tokens=tokens
    )


def run_parallel(jobs: list[tuple[str, Callable, tuple]], workers: int, console) -> dict[str, Any]:
    """Run (name, fn, args) jobs on ``workers`` spawned processes, each set up by ``job_env``;
    returns {name: result}."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: dict[str, Any] = {}
    if not jobs:
        return results
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(f"{len(jobs)} jobs", total=len(jobs))
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=get_context("spawn"), initializer=job_env
        ) as pool:
            futures = {pool.submit(fn, *args): name for name, fn, args in jobs}
            for fut in as_completed(futures):
                name = futures[fut]
                results[name] = fut.result()
                bar.update(task, advance=1, description=f"done: {name}")
    return results
