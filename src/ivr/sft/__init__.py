"""Supervised cold start (``ivr sft``): cross-entropy on the assistant tokens of chat rows.

``data.py`` turns chat rows into pre-tokenised examples and padded batches; ``runner.py`` trains
on them (its header says what is implemented and why). The model set-up, seeds and row order are
those of the RL trainer (``ivr.training``); checkpoints are ``ivr.checkpoint``'s.

    from ivr.config import load_config
    from ivr.sft import run_sft
    run_sft(load_config("configs/sft_tiny.yaml", ["sft.steps=200"]))
"""

from .data import Example, SFTData, assistant_spans, collate, encode_example, resolve_sft_file
from .runner import SFTRunner, evaluate, length_groups, run_sft, sft_loss

__all__ = [
    "Example",
    "SFTData",
    "SFTRunner",
    "assistant_spans",
    "collate",
    "encode_example",
    "evaluate",
    "length_groups",
    "resolve_sft_file",
    "run_sft",
    "sft_loss",
]
