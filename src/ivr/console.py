"""What a person running ``ivr`` sees: our output, not the libraries'.

``third_party_quiet()`` wraps every CLI job. For its duration it turns off what transformers,
huggingface_hub, bitsandbytes, peft and accelerate print on their own — per-load "Loading weights"
and per-save "Writing model shards" tqdm bars, kernel-availability notices, advisory and
deprecation warnings (some repeated every step) — through each library's own switches:
transformers' ``set_verbosity_error`` / ``disable_progress_bar``, huggingface_hub's
``disable_progress_bars``, the ``logging`` levels of the others, and ``warnings`` filters for
the libraries' ``FutureWarning`` / ``DeprecationWarning``. Errors still show; our own warnings
and progress bars are untouched. Worker processes the job starts (``ivr demo``'s pool) inherit it
through the environment (``HF_HUB_DISABLE_PROGRESS_BARS``, ``TRANSFORMERS_VERBOSITY``, and
``IVR_QUIET_THIRD_PARTY``, which ``import ivr`` honours). Everything is restored when the job
ends, so a program that calls ``ivr.cli.main`` keeps its own settings. ``IVR_DEBUG=1`` or
``ivr -v`` leave it all on. A variable the user set in the environment is never overridden.

The summaries printed at the end of ``ivr train`` and ``ivr sft`` are here too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "QUIET_ENV",
    "debug_enabled",
    "print_sft_summary",
    "print_train_summary",
    "quiet_process",
    "third_party_quiet",
]

#: Libraries whose ``logging`` output is limited to errors (their children included).
THIRD_PARTY_LOGGERS = ("transformers", "huggingface_hub", "bitsandbytes", "peft", "accelerate")
#: Their warnings of these categories are not shown (``warnings`` module names, a regex).
_THIRD_PARTY_MODULES = r"(transformers|huggingface_hub|bitsandbytes|peft|accelerate|trl)(\.|$)"
#: Set for the job's duration; a process that imports ``ivr`` with it set calls ``quiet_process``.
QUIET_ENV = "IVR_QUIET_THIRD_PARTY"
#: Read by the libraries when a worker process imports them.
_CHILD_ENV = {
    QUIET_ENV: "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def debug_enabled() -> bool:
    """``IVR_DEBUG`` is set (to anything but empty or 0): tracebacks and third-party output."""
    return os.environ.get("IVR_DEBUG", "") not in ("", "0")


def quiet_process() -> None:
    """This process's ``logging`` levels and ``warnings`` filters for the libraries (not undone:
    for a worker process started by a quiet job)."""
    for name in THIRD_PARTY_LOGGERS:
        if name == "transformers" and "TRANSFORMERS_VERBOSITY" in os.environ:
            continue  # transformers applies it (the user's, or ours in a worker process)
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_THIRD_PARTY_MODULES)


@contextmanager
def third_party_quiet(verbose: bool = False, *, libraries: bool = True) -> Iterator[None]:
    """Third-party progress bars, notices and deprecation warnings off while the block runs
    (nothing changes with ``verbose`` or ``IVR_DEBUG``); everything restored afterwards.

    ``libraries``: also switch transformers and huggingface_hub (importing them first: ~1 s) and
    set the environment of worker processes; False for jobs that never import them.
    """
    if verbose or debug_enabled():
        yield
        return
    levels = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    env_set: list[str] = []
    restore: list[Any] = []
    with warnings.catch_warnings():  # restores the filters
        quiet_process()
        if libraries:
            # Imported before the environment changes, so this process reads none of it.
            import huggingface_hub.utils as hub
            from transformers.utils import logging as hf_logging

            verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
            hub_bars = not hub.are_progress_bars_disabled()
            restore.append(lambda: hf_logging.set_verbosity(verbosity))
            restore.append(
                hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar
            )
            restore.append(hub.enable_progress_bars if hub_bars else hub.disable_progress_bars)
            if "TRANSFORMERS_VERBOSITY" not in os.environ:  # else the user's choice stands
                hf_logging.set_verbosity_error()
            if bars and os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") != "0":  # the user's
                hf_logging.disable_progress_bar()  # transformers' bars and huggingface_hub's
            for name, value in _CHILD_ENV.items():
                if name not in os.environ:
                    os.environ[name] = value
                    env_set.append(name)
        try:
            yield
        finally:
            for name in env_set:
                os.environ.pop(name, None)
            for undo in restore:
                undo()
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


# ---------------------------------------------------------------------- end-of-job summaries
_TRAIN_ROWS = (
    ("reward/mean", "reward"),
    ("reward/accuracy", "accuracy"),
    ("reward/format", "format"),
    ("reward/group_solved", "groups with a correct sample"),
    ("reward_mixed/mean", "reward after rectification"),
    ("ivr/failed", "failed rollouts (IVR-R1)"),
    ("ivr/accepted", "rectified and accepted"),
    ("ivr/success_rate", "rectification success rate"),
    ("self_reward/mean", "self-reward"),
    ("loss/kl", "KL to the reference"),
    ("loss/grad_norm", "gradient norm"),
    ("completion_len", "completion length (tokens)"),
    ("lr", "learning rate"),
    ("time/step", "seconds per step"),
)
_EVAL_LABELS = {  # eval/<key> of the SFT eval (ivr.eval.runner.evaluate_samples); rates in %
    "n": ("held-out rows", False),
    "accuracy": ("accuracy %", True),
    "format": ("format %", True),
    "desc_exact": ("description exact %", True),
    "desc_f1": ("description F1 %", True),
    "desc_attr_f1": ("description attribute F1 %", True),
    "loc_reward": ("localization reward (of 3)", False),
    "finished": ("finished (stopped before the limit) %", True),
}


def _fmt(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–" if value is None else str(value)
    if not math.isfinite(value):
        return "nan"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3g}"
    return f"{value:.4f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"


def _run_means(metrics_file: Path) -> tuple[dict[str, float], int]:
    """Mean of each numeric metric over the rows of a run's ``metrics.jsonl``, and the row count."""
    sums: dict[str, list[float]] = {}
    n = 0
    if not metrics_file.is_file():
        return {}, 0
    for line in metrics_file.read_text().splitlines():
        if not line.strip():
            continue
        n += 1
        for k, v in json.loads(line).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                sums.setdefault(k, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in sums.items()}, n


class _Out:
    """rich for the tables; plain lines are never wrapped (a path stays one line) nor read as
    markup (a path may hold brackets)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False)

    def line(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, markup=False)

    def table(self, title: str, *columns: str):
        """An empty table with ``columns``, after ``title`` (a line: long paths stay whole)."""
        from rich.table import Table

        self.line(title)
        table = Table()
        for i, name in enumerate(columns):
            table.add_column(name, justify="left" if i == 0 else "right")
        return table


def print_train_summary(metrics: Mapping[str, Any], out_dir: str | Path) -> None:
    """The end of ``ivr train``: the last step's key metrics next to their means over the run,
    and where the final model and the full metrics are."""
    out, o = Path(out_dir), _Out()
    means, n_steps = _run_means(out / "metrics.jsonl")
    if not metrics:
        o.line(f"nothing to train: {out} is already at its last step")
    else:
        table = o.table(f"ivr train: {out} ({n_steps} steps logged)", "metric", "last step",
                        "run mean")  # fmt: skip
        for key, label in _TRAIN_ROWS:
            if key in metrics:
                table.add_row(label, _fmt(metrics[key]), _fmt(means.get(key)))
        o.console.print(table)
    if (out / "final").is_dir():
        o.line(f"final model: {out / 'final'}")
    if (out / "metrics.jsonl").is_file():
        o.line(f"every metric, per step: {out / 'metrics.jsonl'}")


def print_sft_summary(result: Mapping[str, Any], out_dir: str | Path) -> None:
    """The end of ``ivr sft``: the final eval as a table, the training loss, the saved model."""
    out, o = Path(out_dir), _Out()
    steps = int(result.get("step", 0))
    rows = []
    for key, value in result.items():
        if not key.startswith("eval/"):
            continue
        name = key.removeprefix("eval/")
        if name.startswith("accuracy/"):  # per task
            label, rate = f"accuracy % ({name.removeprefix('accuracy/')})", True
        else:
            label, rate = _EVAL_LABELS.get(name, (name, False))
        rate = rate and isinstance(value, (int, float)) and math.isfinite(value)
        rows.append((label, f"{100.0 * value:.1f}" if rate else _fmt(value)))
    if rows:
        table = o.table(f"final eval (step {steps})", "metric", "value")
        for label, text in rows:
            table.add_row(label, text)
        o.console.print(table)
    elif "sft/loss" in result:
        o.line("no eval (data.eval is not set)")
    if "sft/loss" in result:
        o.line(
            f"step {steps}: loss {_fmt(result['sft/loss'])}, "
            f"token accuracy {_fmt(result.get('sft/token_accuracy'))}"
        )
    o.line(f"saved the final model to {result.get('final_dir') or out / 'final'}")
    if (out / "metrics.jsonl").is_file():
        o.line(f"every metric, per step: {out / 'metrics.jsonl'}")
