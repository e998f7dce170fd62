"""The ``algo.name`` presets: a published recipe is a handful of loss settings.

Kept apart from ``config.py`` (which applies them at load time) and free of torch, so loading a
config never imports it; ``rl.losses.LOSS_PRESETS`` is this table as ``policy_loss`` keyword
arguments. Citations per preset below; docs/method.md says when to use each.
"""

from __future__ import annotations

import types
from typing import Any

_GRPO = {
    "beta": 0.0,
    "clip_low": 0.2,
    "clip_high": 0.2,
    "aggregation": "token",
    "scale_advantages": True,
}
#: ``algo.name`` -> defaults for the algo keys a run does not set itself (in its YAML or as an
#: ``algo.key=value`` override); explicit keys always win. ``grpo`` (the default), ``ivr`` and
#: ``ivr_r1`` are AlgoConfig's own defaults: IVR-R1 trains with GRPO's loss and switches on the
#: re-reasoning loop with ``ivr.enabled``. ``rl.losses.LOSS_PRESETS`` is this table as
#: ``policy_loss`` keyword arguments (kept here so loading a config never imports torch).
ALGO_PRESETS: types.MappingProxyType[str, types.MappingProxyType[str, Any]] = (
    types.MappingProxyType(
        {
            # IVR-R1 A.1 / DESIGN.md §1: clipped surrogate, loss over all tokens of the batch
            "grpo": types.MappingProxyType(dict(_GRPO)),
            "ivr": types.MappingProxyType(dict(_GRPO)),
            "ivr_r1": types.MappingProxyType(dict(_GRPO)),
            # DAPO (arXiv:2503.14476): clip-higher 0.28, token-level loss, no KL
            "dapo": types.MappingProxyType({**_GRPO, "clip_high": 0.28}),
            # Dr.GRPO (arXiv:2503.20783): no std division, constant normaliser
            "dr_grpo": types.MappingProxyType(
                {**_GRPO, "aggregation": "dr_grpo", "scale_advantages": False}
            ),
            # DeepSeekMath's GRPO (arXiv:2402.03300): per-sequence mean, KL β = 0.04
            "deepseekmath": types.MappingProxyType(
                {**_GRPO, "aggregation": "sequence", "beta": 0.04}
            ),
            # GSPO (arXiv:2507.18071): one clipped ratio per sequence, its own tiny ε
            "gspo": types.MappingProxyType(
                {
                    **_GRPO,
                    "loss": "gspo",
                    "clip_low": 3e-4,
                    "clip_high": 4e-4,
                    "aggregation": "sequence",
                }
            ),
            # CISPO (MiniMax-M1, arXiv:2506.13585): clipped, detached IS weight, no lower bound
            "cispo": types.MappingProxyType(
                {**_GRPO, "loss": "cispo", "clip_low": 1.0, "clip_high": 4.0}
            ),
            # SAPO (arXiv:2511.20347): a soft gate instead of the clip (clips unused), 1/|y_i|
            "sapo": types.MappingProxyType(
                {
                    **_GRPO,
                    "loss": "sapo",
                    "aggregation": "sequence",
                    "sapo_tau_pos": 1.0,
                    "sapo_tau_neg": 1.05,
                }
            ),
        }
    )
)
#: Known ``algo.name`` values: the presets.
ALGO_NAMES = frozenset(ALGO_PRESETS)

__all__ = ["ALGO_NAMES", "ALGO_PRESETS"]
