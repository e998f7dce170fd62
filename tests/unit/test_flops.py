"""ivr.models.flops: model FLOPs from configs, numbers derived by hand in the comments.

Convention: 1 multiply-add = 2 FLOPs; training = 3 × forward; attention is causal.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from ivr.models.flops import (
    QWEN2_5_VL_7B,
    FlopCounter,
    TextDims,
    VisionDims,
    generation_flops,
    mfu,
    text_forward_flops,
    text_matmul_params,
    training_flops,
    vision_forward_flops,
)
from ivr.models.kv_cache import CACHE_KWARGS, cache_kwarg, output_cache

# A 2-layer toy: h = 8, I = 16, a = 2 heads, g = 1 kv head, d = 4, vocab 10.
TOY = TextDims(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=10)


def test_toy_matmul_params() -> None:
    # per layer: q 8·2·4 = 64, k 8·1·4 = 32, v 32, o 2·4·8 = 64 → 192; MLP 3·8·16 = 384
    # → 576 per layer, × 2 layers = 1152; LM head 10·8 = 80 → 1232
    assert text_matmul_params(TOY, lm_head=False) == 1152
    assert text_matmul_params(TOY) == 1232


def test_toy_forward_by_hand() -> None:
    # 3 tokens, no cache: linear 2·3·1152 = 6912; keys seen 1 + 2 + 3 = 6, attention
    # 4·layers·a·d·6 = 4·2·2·4·6 = 384; head 2·3·8·10 = 480 → 7776
    assert text_forward_flops(TOY, 3) == 7776
    # after 5 cached tokens: keys 6 + 7 + 8 = 21 → attention 64·21 = 1344 → 6912 + 1344 + 480
    assert text_forward_flops(TOY, 3, past=5) == 8736
    # logits for 1 position only: head 2·1·80 = 160 → 6912 + 384 + 160; and per row
    assert text_forward_flops(TOY, 3, logits=1) == 7456
    assert text_forward_flops(TOY, 3, rows=4) == 4 * 7776
    assert text_forward_flops(TOY, 0) == 0


def test_toy_generation_by_hand() -> None:
    # prompt 5, 3 new tokens, 2 rows.
    # prefill (per row): linear 2·5·1152 = 11520, keys 1+…+5 = 15 → 64·15 = 960, head for the
    #   last position 160 → 12640
    # decode of the 2 fed-back tokens (per row): linear 2·2·1152 = 4608, keys 6 + 7 = 13 → 832,
    #   head 2·2·80 = 320 → 5760
    assert generation_flops(TOY, 5, 3, rows=2) == 2 * (12640 + 5760)
    # the G rows share one prefill (ivr's decode loop): 12640 + 2·5760
    assert generation_flops(TOY, 5, 3, rows=2, prefills=1) == 12640 + 2 * 5760
    assert generation_flops(TOY, 5, 0, rows=2) == 0


def test_generation_equals_one_forward_per_token_over_the_cache() -> None:
    prompt, n = 7, 6
    loop = text_forward_flops(TOY, prompt, logits=1) + sum(
        text_forward_flops(TOY, 1, past=prompt + t) for t in range(n - 1)
    )
    assert generation_flops(TOY, prompt, n) == loop


def test_training_is_three_forwards() -> None:
    assert training_flops(7776.0) == 3 * 7776.0


# A toy tower: depth 2, H = 8, I_v = 12, patch 2, merge 2, out 6, t = 2, C = 3, windows of
# 8 px = 8 // 2 // 2 = 2 merged tokens a side, block 1 full attention.
TOY_VISION = VisionDims(
    depth=2,
    hidden=8,
    intermediate=12,
    patch=2,
    merge=2,
    out_hidden=6,
    window=8,
    fullatt_blocks=(1,),
)


def test_toy_vision_by_hand() -> None:
    # one image of 4×6 patches = 24 patches; merged grid 2×3; windows: rows [2] × cols [2, 1]
    # → windows of 2·2·4 = 16 and 2·1·4 = 8 patches.
    # patch embed 2·24·(3·2·2²)·8 = 2·24·24·8 = 9216
    # blocks 2·(4·8² + 3·8·12) = 1088 per patch per block, × 24 × 2 = 52224
    # attention 4·H·(full: 24² = 576; windows: 16² + 8² = 320) = 32·(576 + 320) = 28672
    # merger M = 8·4 = 32, 6 merged tokens: 2·6·(32·32 + 32·6) = 14592
    assert vision_forward_flops(TOY_VISION, [(1, 4, 6)]) == 9216 + 52224 + 28672 + 14592
    # two frames (t = 2) cost twice one frame; a second image adds its own cost
    one = vision_forward_flops(TOY_VISION, [(1, 4, 6)])
    assert vision_forward_flops(TOY_VISION, [(2, 4, 6)]) == 2 * one
    assert vision_forward_flops(TOY_VISION, [(1, 4, 6), (1, 4, 6)]) == 2 * one


def test_vision_without_windows_attends_over_the_frame() -> None:
    v = VisionDims(depth=2, hidden=8, intermediate=12, patch=2, merge=2, out_hidden=6)
    # as above but both blocks full: attention 32·(576 + 576) = 36864
    assert vision_forward_flops(v, [(1, 4, 6)]) == 9216 + 52224 + 36864 + 14592


# ---------------------------------------------------------------- Qwen2.5-VL-7B


def test_7b_dims_from_config() -> None:
    from transformers import Qwen2_5_VLConfig

    for cfg in (QWEN2_5_VL_7B, Qwen2_5_VLConfig(**QWEN2_5_VL_7B)):
        assert TextDims.from_config(cfg) == TextDims(
            hidden=3584,
            intermediate=18944,
            layers=28,
            heads=28,
            kv_heads=4,
            head_dim=128,
            vocab=152064,
        )
        v = VisionDims.from_config(cfg)
        assert (v.depth, v.hidden, v.intermediate, v.patch, v.merge, v.out_hidden) == (
            32,
            1280,
            3420,
            14,
            2,
            3584,
        )
        assert (v.window, v.fullatt_blocks, v.mlp_matmuls) == (112, (7, 15, 23, 31), 3)


def test_7b_text_follows_the_2n_rule() -> None:
    d = TextDims.from_config(QWEN2_5_VL_7B)
    # N per layer: q and o 3584·3584 = 12,845,056 each; k and v 3584·4·128 = 1,835,008 each;
    # MLP 3·3584·18944 = 203,685,888 → 233,046,016; × 28 = 6,525,288,448; + LM head
    # 152064·3584 = 544,997,376 → 7,070,285,824 (+ the 545M embedding = Qwen's "7.6B").
    n = text_matmul_params(d)
    assert n == 7_070_285_824
    # 1,024 tokens: attention 4·28·28·128·(1024·1025/2) = 2.11e11 against 2·N·1024 = 1.45e13,
    # i.e. +1.5 %: the 2·N·tokens rule holds within 2 %.
    f = text_forward_flops(d, 1024)
    assert 1.0 < f / (2 * n * 1024) < 1.02
    assert f - 2 * n * 1024 == 4 * 28 * 28 * 128 * (1024 * 1025 // 2)


def test_7b_vision_on_a_448px_image() -> None:
    v = VisionDims.from_config(QWEN2_5_VL_7B)
    # 448 px = 32×32 patches of 14 px = 1,024 patches; merged 16×16; windows of 112 px =
    # 4×4 merged = 64 patches → 16 windows.
    # patch embed 2·1024·(3·2·14²)·1280 = 3,082,813,440
    # blocks 32·1024·2·(4·1280² + 3·1280·3420) = 1,290,167,910,400
    # attention 4·1280·(4 full blocks·1024² + 28 windowed blocks·16·64²) = 30,870,077,440
    # merger M = 5120, 256 tokens: 2·256·(5120² + 5120·3584) = 22,817,013,760
    got = vision_forward_flops(v, [(1, 32, 32)])
    assert got == 3_082_813_440 + 1_290_167_910_400 + 30_870_077_440 + 22_817_013_760
    # ≈ 2·N_vision·patches (N ≈ 0.68B, the merger per merged token) within 3 %
    n_per_patch = 3 * 2 * 14**2 * 1280 + 32 * 19_686_400 + (5120**2 + 5120 * 3584) / 4
    assert 1.0 < got / (2 * n_per_patch * 1024) < 1.03


def test_mfu() -> None:
    # 790e12 FLOPs in 2 s at a 790 TFLOP/s peak: 50 %
    assert mfu(790e12, 2.0) == pytest.approx(0.5)
    assert mfu(1e12, 1.0, peak_tflops=100.0) == pytest.approx(0.01)
    assert mfu(1.0, 0.0) != mfu(1.0, 0.0)  # nan


# ---------------------------------------------------------------- the counter on a live model


@pytest.fixture(scope="module")
def toy_vlm() -> torch.nn.Module:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1]},
        ),
        vision_config=dict(
            depth=2,
            hidden_size=16,
            intermediate_size=24,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
            out_hidden_size=32,
        ),
        image_token_id=60,
        video_token_id=61,
        vision_start_token_id=62,
        vision_end_token_id=63,
    )
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def test_counter_charges_forwards_by_phase(toy_vlm: torch.nn.Module) -> None:
    d = TextDims.from_config(toy_vlm.config)
    ids = torch.randint(0, 50, (3, 5))
    with FlopCounter(toy_vlm) as counter:
        with torch.no_grad():
            out = toy_vlm(input_ids=ids, use_cache=True)  # prefill: 3 rows × 5 tokens
            with counter.charging("decode"):  # 1 token per row over the 5 cached ones
                toy_vlm(input_ids=ids[:, :1], **{cache_kwarg(toy_vlm): output_cache(out)})
        with counter.charging("train"):
            toy_vlm(input_ids=ids, logits_to_keep=2)  # with grad: × 3, logits for 2 positions
    assert counter.flops["other"] == text_forward_flops(d, 5, rows=3)
    assert counter.flops["decode"] == text_forward_flops(d, 1, past=5, rows=3)
    assert counter.flops["train"] == 3 * text_forward_flops(d, 5, logits=2, rows=3)
    # hooks are gone after the block
    toy_vlm(input_ids=ids)
    assert set(counter.flops) == {"other", "decode", "train"}


@pytest.mark.parametrize("keyword", CACHE_KWARGS)
def test_counter_reads_the_cache_under_either_keyword(toy_vlm: torch.nn.Module, keyword) -> None:
    """transformers 5.24 hands the language model ``cache=``, older 5.x ``past_key_values=``;
    the counter charges attention over the cached tokens for both (the language model is
    called directly so that the name reaches the hook as written, on any version; the name
    the installed version deprecates is allowed its warning here)."""
    d = TextDims.from_config(toy_vlm.config)
    lm = toy_vlm.model.language_model
    ids = torch.randint(0, 50, (3, 5))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        cache = output_cache(lm(input_ids=ids, use_cache=True))
        with FlopCounter(toy_vlm) as counter:
            lm(input_ids=ids[:, :1], **{keyword: cache}, use_cache=True)
    assert counter.flops["other"] == text_forward_flops(d, 1, past=5, logits=0, rows=3)


def test_counter_charges_the_vision_tower(toy_vlm: torch.nn.Module) -> None:
    v = VisionDims.from_config(toy_vlm.config)
    grid = torch.tensor([[1, 8, 12]])  # 96 patches of 3·2·14·14 values
    pixels = torch.randn(96, 3 * 2 * 14 * 14)
    with FlopCounter(toy_vlm) as counter, torch.no_grad():
        toy_vlm.model.visual(pixels, grid_thw=grid)
    assert counter.flops["other"] == vision_forward_flops(v, [(1, 8, 12)])


@pytest.mark.parametrize("grid", [(1, 32, 32), (1, 10, 14), (1, 6, 30), (2, 34, 22)])
def test_windows_match_transformers(grid: tuple[int, int, int]) -> None:
    """The window tiling agrees with ``transformers``' own (ragged edge windows included)."""
    vision_utils = pytest.importorskip("transformers.vision_utils")
    from ivr.models.flops import _window_sizes

    v = VisionDims.from_config(QWEN2_5_VL_7B)
    _, cu = vision_utils.get_vision_window_index(torch.tensor([grid]), 2, 112, 14)
    theirs = sorted(n for n in (cu[1:] - cu[:-1]).tolist() if n > 0)
    assert theirs == sorted(_window_sizes(grid[1], grid[2], v) * grid[0])
