"""Fixtures shared by the integration tests (the session-wide tiny models are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from ivr.models.policy import Policy


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def policy(request: pytest.FixtureRequest) -> Policy:
    """A fresh policy on each tiny model (Qwen2.5-VL, Qwen3-VL), one per test module."""
    name = {"qwen2_5_vl": "tiny_qwen25_dir", "qwen3_vl": "tiny_qwen3_dir"}[request.param]
    return Policy.from_pretrained(request.getfixturevalue(name))
