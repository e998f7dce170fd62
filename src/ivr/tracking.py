"""Where metrics go: JSONL (always plottable, resumable), TensorBoard, wandb when installed, and a
rich progress bar for the person watching.

On resume, rows of ``metrics.jsonl`` past the checkpoint's step are dropped before new ones are
appended, so the file of a killed-and-resumed run equals that of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep only rows with ``step <= max_step`` (rows written after the last checkpoint go)."""
    if not path.is_file():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= max_step
    ]
    path.write_text("".join(line + "\n" for line in keep))


class Tracker:
    """Fan metrics out to the configured sinks. Only the main process should own one."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        total_steps: int,
        start_step: int = 0,
        jsonl: bool = True,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "ivr",
        progress: bool = True,
        config: dict[str, Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self._jsonl = self._tb = self._wandb = self._progress = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if jsonl:
            path = self.out_dir / "metrics.jsonl"
            truncate_jsonl(path, start_step)
            truncate_jsonl(self.out_dir / "samples.jsonl", start_step)
            truncate_jsonl(self.out_dir / "traces.jsonl", start_step)
            self._jsonl = path.open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=start_step + 1)
        if wandb:
            try:
                import wandb as wb
            except ImportError as e:  # pragma: no cover - optional extra
                raise RuntimeError("log.wandb=true needs `pip install ivr[wandb]`") from e
            self._wandb = wb.init(project=wandb_project, config=config, dir=str(self.out_dir))
        if progress:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=total_steps, completed=start_step, info=""
            )

    @classmethod
    def for_run(
        cls, out_dir: str | Path, log: Any, *, total_steps: int, start_step: int,
        config: dict[str, Any], enabled: bool = True,
    ) -> Tracker:  # fmt: skip
        """A tracker with the sinks of a ``LogConfig`` (the ``log`` section of a run's config)."""
        return cls(
            out_dir, total_steps=total_steps, start_step=start_step, jsonl=log.jsonl,
            tensorboard=log.tensorboard, wandb=log.wandb, wandb_project=log.wandb_project,
            progress=log.progress, config=config, enabled=enabled,
        )  # fmt: skip

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        if self._jsonl:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        numeric = {
            k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)
        }
        if self._tb:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb:
            self._wandb.log(numeric, step=step)
        if self._progress:
            parts = [
                f"{name} {numeric[key]:.3f}"
                for name, key in [
                    ("reward", "reward/mean"),
                    ("acc", "reward/accuracy"),
                    ("kl", "loss/kl"),
                    ("s/step", "time/step"),
                ]
                if key in numeric
            ]
            self._progress.update(self._task, completed=step, info="  ".join(parts))

    def write_rows(self, name: str, step: int, rows: list[dict[str, Any]]) -> None:
        """Append per-step records (sampled completions, IVR traces) to ``name.jsonl``."""
        if not self.enabled or not rows:
            return
        with (self.out_dir / f"{name}.jsonl").open("a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()
        if self._wandb:
            self._wandb.finish()
        if self._progress:
            self._progress.stop()
