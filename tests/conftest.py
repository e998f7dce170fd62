"""Shared fixtures. The test suite runs offline (``HF_HUB_OFFLINE=1``).

Threads are pinned to 1: on a 2-core CI box another busy process made 2-thread torch ~40× slower
(DESIGN.md §3), and single-thread numbers are the ones the timing assertions are written for.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded in tests

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_qwen25_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen2.5-VL (text hidden 128, 2 layers; ~0.64M params), built once."""
    from ivr.models.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_qwen25"), "qwen2_5_vl", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen3-VL (text hidden 128, 2 layers, deepstack; ~0.86M params), built once."""
    from ivr.models.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_qwen3"), "qwen3_vl", seed=0)


@pytest.fixture(scope="module")
def colour_world(tmp_path_factory) -> list:
    """Four one-colour images (two sizes) with their colour as a text answer."""
    from PIL import Image

    from ivr.types import Sample

    root = tmp_path_factory.mktemp("colour_world")
    samples = []
    for i, colour in enumerate(["red", "blue", "green", "white"]):
        path = root / f"{i}.png"
        Image.new("RGB", (56 + 28 * (i % 2), 56), colour).save(path)
        samples.append(
            Sample(
                id=str(i),
                question=f"What colour {i}?",
                answer=colour,
                images=(str(path),),
                answer_type="text",
            )
        )
    return samples
