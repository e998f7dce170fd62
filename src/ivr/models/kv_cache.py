"""The KV-cache keyword of a transformers model: ``cache`` (transformers ≥ 5.24) or ``past_key_values``.

transformers 5.24 renamed ``forward(past_key_values=…)`` to ``forward(cache=…)``: the old name
still works but raises a ``FutureWarning`` on every call (removal announced for 5.40), and the
output field moved with it (``out.cache``; ``out.past_key_values`` still answers, with a logged
warning). Versions before 5.24 know only ``past_key_values`` and would silently swallow
``cache=…`` into ``**kwargs`` and run without the cache — so the name is read from the installed
model's ``forward`` signature, never assumed. ``pyproject.toml`` admits both (``>=5.0,<6``)::

    kw = cache_kwarg(model)  # once per loop, not per step
    out = model(input_ids=ids, **{kw: cache}, use_cache=True)
    cache = output_cache(out)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

__all__ = ["CACHE_KWARGS", "cache_kwarg", "input_cache", "output_cache"]

CACHE_KWARGS = ("cache", "past_key_values")  # the new name first


@functools.cache
def _forward_cache_kwarg(cls: type) -> str:
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):  # no introspectable signature: the name every 5.x knows
        return "past_key_values"
    return next((name for name in CACHE_KWARGS if name in params), "past_key_values")


def cache_kwarg(model: Any) -> str:
    """The keyword under which ``model``'s forward takes a KV cache: ``"cache"`` where the
    installed transformers has it (≥ 5.24), else ``"past_key_values"``. PEFT wrappers are seen
    through (their forward is ``**kwargs``); the answer is cached per model class.

    >>> class New:
    ...     def forward(self, input_ids=None, cache=None, **kwargs): ...
    >>> class Old:
    ...     def forward(self, input_ids=None, past_key_values=None, **kwargs): ...
    >>> cache_kwarg(New()), cache_kwarg(Old())
    ('cache', 'past_key_values')
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_cache_kwarg(type(base))


def output_cache(out: Mapping[str, Any]) -> Any:
    """The KV cache a forward returned (``out.cache`` or ``out.past_key_values``, whichever
    field this transformers has), or None; never touches the deprecated alias."""
    keys = out.keys()  # the real field names (``in``/``get`` would map the old name, warning)
    return next((out[name] for name in CACHE_KWARGS if name in keys), None)


def input_cache(kwargs: Mapping[str, Any]) -> Any:
    """The KV cache passed to a forward under either keyword, or None (for forward hooks)."""
    return next((kwargs[n] for n in CACHE_KWARGS if kwargs.get(n) is not None), None)
