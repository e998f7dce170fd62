"""Shared by the integration tests that train a few steps of a tiny VLM."""

from __future__ import annotations

from pathlib import Path

from ivr.config import load_config


def cfg_for(tmp_path: Path, model_dir: Path, *extra: str):
    return load_config(
        None,
        [
            f"model.path={model_dir}",
            "model.device=cpu",
            f"train.output_dir={tmp_path / 'run'}",
            "train.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=6",
            "rollout.top_p=1.0",
            "algo.lr=0.02",
            "algo.micro_batch_size=4",
            "log.progress=false",
            "log.tensorboard=false",
            *extra,
        ],
    )
