"""Which launches shard, and which modules become FSDP units (rl/sharding.py).

The sharded training itself runs in tests/integration/test_multiprocess.py (2 gloo processes).
"""

from __future__ import annotations

import pytest

from ivr.rl.sharding import layer_classes, sharding_mode


def test_auto_follows_the_accelerate_launch(monkeypatch) -> None:
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert sharding_mode("auto") == "none"
    assert sharding_mode("fsdp") == "fsdp" and sharding_mode("none") == "none"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for FSDP
    assert sharding_mode("auto") == "fsdp"
    assert sharding_mode("none") == "none"  # an explicit choice wins


def test_deepspeed_launch_is_refused_with_the_way_out(monkeypatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="configs/accelerate/fsdp.yaml"):
        sharding_mode("auto")


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [("tiny_qwen25_dir", "Qwen2_5_VLDecoderLayer"), ("tiny_qwen3_dir", "Qwen3VLTextDecoderLayer")],
)
def test_units_are_the_text_decoder_layers(request, monkeypatch, fixture, expected) -> None:
    from transformers import AutoModelForImageTextToText

    monkeypatch.delenv("FSDP_TRANSFORMER_CLS_TO_WRAP", raising=False)
    model = AutoModelForImageTextToText.from_pretrained(request.getfixturevalue(fixture))
    assert layer_classes(model) == {expected}  # vision blocks stay in the root unit
    # accelerate's fsdp_transformer_layer_cls_to_wrap (vision names dropped for the same reason)
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", f"{expected},Qwen2_5_VLVisionBlock")
    assert layer_classes(model) == {expected}


def test_a_model_without_layer_names_is_named(monkeypatch) -> None:
    import torch

    monkeypatch.delenv("FSDP_TRANSFORMER_CLS_TO_WRAP", raising=False)
    with pytest.raises(ValueError, match="FSDP_TRANSFORMER_CLS_TO_WRAP"):
        layer_classes(torch.nn.Linear(2, 2))
