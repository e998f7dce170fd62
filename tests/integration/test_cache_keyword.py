"""The KV-cache keyword on the installed transformers (``ivr.models.kv_cache``).

transformers 5.24 renamed ``forward(past_key_values=…)`` to ``forward(cache=…)`` (the old name
warns on every call until its removal, announced for 5.40); older 5.x know only the old name and
would ignore the new one. The decode loop and the shared-prefix scoring must pass the name the
installed version takes — no deprecation warning per step — and that name must really reach the
cache (a swallowed keyword would decode without context, which the logits would show).
``policy``: tests/integration/conftest.py (both tiny models).
"""

from __future__ import annotations

import inspect
import logging
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ivr.models.kv_cache import cache_kwarg, output_cache
from ivr.models.policy import Policy, chat_prompt


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))


def test_keyword_is_the_one_the_installed_forward_takes(policy: Policy) -> None:
    params = inspect.signature(type(policy.model).forward).parameters
    kw = cache_kwarg(policy.model)
    assert kw in params
    if "cache" in params:  # transformers ≥ 5.24: the new name, not the deprecated one
        assert kw == "cache"


def test_keyword_reaches_the_cache(policy: Policy) -> None:
    """The last token decoded over the cache (passed under the detected name) gives the same
    logits as the whole sequence in one forward; without the cache it would not."""
    model = policy.model
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        full = model(input_ids=ids).logits[:, -1]
        cache = output_cache(model(input_ids=ids[:, :-1], use_cache=True))
        assert cache is not None and cache.get_seq_length() == 6
        step = model(input_ids=ids[:, -1:], **{cache_kwarg(model): cache}, use_cache=True)
        alone = model(input_ids=ids[:, -1:]).logits[:, -1]
    assert torch.allclose(step.logits[:, -1], full, atol=1e-4)  # logits of size ~10: float32
    assert not torch.allclose(alone, full, atol=1.0)  # without the context: off by ~10


def test_decode_loop_and_shared_prefix_scoring_warn_nothing_about_the_cache(
    policy: Policy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On transformers 5.24 the old keyword gave a FutureWarning per decode step (and a logged
    warning on reading ``out.past_key_values``); none of either may appear now."""
    # transformers logs its deprecation notices once per process: make every one visible here
    monkeypatch.setattr(logging.Logger, "warning_once", logging.Logger.warning, raising=False)
    assert policy.shared_prefix and policy._rope_index_fn() is not None  # the paths under test
    prompts = [chat_prompt("How many?", [_image(0)]), chat_prompt("Which colour?", [_image(1)])]
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        gens = policy.generate(prompts, max_new_tokens=6, num_return_sequences=2, seed=0)
        rows = [p for p in prompts for _ in range(2)]
        comps = [g.token_ids for per in gens for g in per]
        out = policy.completion_logprobs(rows, comps)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "past_key_values" in m or "cache_params" in m], messages
    # the loop really decoded over the cache: its logprobs are the training forward's
    for i, g in enumerate(g for per in gens for g in per):
        n = len(g.token_ids)
        assert torch.allclose(torch.tensor(g.logprobs), out.logprobs[i, :n], atol=1e-4)
