"""Loading a policy from disk: find the model directory (never download), check that it is a
vision-language model with its weights, pick an image processor, and set up 4-bit (QLoRA) loading.

Why a module of its own: everything here runs before (or instead of) the first forward and has
nothing to do with the distribution the policy defines (``ivr.models.decode`` samples it,
``ivr.models.score`` scores it). Errors name the directory and what is wrong, before any weight
is read. ``Policy.from_pretrained`` is the public entry point; ``load_pretrained`` is its body.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from ivr.models.processor import IMAGE_ONLY_PROCESSORS, register_processors

__all__ = ["keep_4bit_layout", "load_pretrained"]

_HUB_ID = re.compile(r"^\w[\w.-]*/\w[\w.-]*$")  # org/name (not ./x, ../x)


def load_pretrained(
    path: str | Path,
    *,
    processor: Any = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
    quantization_config: Any = None,
) -> tuple[torch.nn.Module, Any]:
    """(model, processor) for ``Policy.from_pretrained``, which documents the arguments."""
    source = _resolve_model_path(path, trust_remote_code)
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r} (use e.g. 'float32', 'bfloat16', 'auto')")
        dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit and quantization_config is None:
        quantization_config = _nf4_config(dtype)
    if quantization_config is not None:
        kwargs.update(quantization_config=quantization_config, device_map={"": str(device)})
    if processor is None:  # before the weights: a missing processor should fail fast
        processor = _load_processor(source, trust_remote_code)
    if min_pixels is not None or max_pixels is not None:
        _set_pixel_limits(processor, min_pixels, max_pixels)
    model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    if quantization_config is None:
        model = model.to(device)
    else:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, processor


def _resolve_model_path(path: str | Path, trust_remote_code: bool) -> str:
    """The local model directory ``path`` names, checked by ``_check_model_dir``. Nothing is ever
    downloaded: ``path`` is a directory, or an ``org/name`` id already in the local Hugging Face
    cache (its snapshot directory). Everything else fails at once, naming ``path``."""
    text = str(path)
    p = Path(text).expanduser()
    if p.is_dir():
        _check_model_dir(p, trust_remote_code)
        return str(p)
    if p.exists():
        raise FileNotFoundError(f"model path {text!r} is a file, not a model directory")
    where = "" if p.is_absolute() else f" (looked for {p.absolute()})"
    if not _HUB_ID.match(text):  # ./x, ../x, /x, ~/x, a/b/c, …: a path, and it is not there
        raise FileNotFoundError(f"model directory {text!r} does not exist{where}")
    snapshot = _cached_snapshot(text)
    if snapshot is None:
        raise FileNotFoundError(
            f"model directory {text!r} does not exist{where}, and no Hub model {text!r} is in the "
            f"local Hugging Face cache; ivr never downloads models: download it once (e.g. "
            f"`hf download {text} --local-dir DIR`) and set model.path=DIR"
        )
    _check_model_dir(snapshot, trust_remote_code)
    return str(snapshot)


def _cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot directory of Hub model ``repo_id`` in the local cache, if it is there (no
    network: ``local_files_only``)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), not a valid id
        return None


def _check_model_dir(d: Path, trust_remote_code: bool) -> None:
    """A model directory ivr can train: a config.json of a vision-language model, and its
    weights. One-line errors naming ``d`` and what is missing (the processor is checked by
    ``_load_processor``)."""
    if not (d / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(d)!r} is not a Hugging Face model directory (no config.json)"
        )
    config = AutoConfig.from_pretrained(str(d), trust_remote_code=trust_remote_code)
    if not _is_vision_language(config):
        what = ", ".join(getattr(config, "architectures", None) or ()) or config.model_type
        raise ValueError(
            f"{str(d)!r} is not a vision-language model: its config.json describes {what} "
            f"(model_type {config.model_type!r}, no vision_config); ivr trains image-text-to-text "
            f"models such as Qwen2.5-VL or Qwen3-VL"
        )
    missing = _missing_weights(d)
    if missing is not None:
        raise FileNotFoundError(f"{str(d)!r} has a config.json but {missing}")


def _is_vision_language(config: Any) -> bool:
    """A vision tower in the config, or a model ``AutoModelForImageTextToText`` can build."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    auto_map = getattr(config, "auto_map", None) or {}
    return (
        getattr(config, "vision_config", None) is not None
        or type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
        or "AutoModelForImageTextToText" in auto_map
    )


def _missing_weights(d: Path) -> str | None:
    """What is missing of the weights in model directory ``d`` (None: nothing). A sharded
    checkpoint's index must find each of its shards; otherwise one *.safetensors or
    pytorch_model*.bin file (a LoRA adapter's adapter_model.* does not count) is enough."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = d / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            absent = [s for s in shards if not (d / s).is_file()]
            if not absent:
                return None
            more = ", …" if len(absent) > 3 else ""
            return (
                f"{len(absent)} of the {len(shards)} weight files its {index_name} lists are "
                f"missing ({', '.join(absent[:3])}{more})"
            )
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        if any(not f.name.startswith("adapter_") for f in d.glob(pattern)):
            return None
    return "no weights (no *.safetensors or pytorch_model*.bin file)"


def _has_image_processor_config(d: Path) -> bool:
    """preprocessor_config.json, or a processor_config.json with an image_processor entry."""
    if (d / "preprocessor_config.json").is_file():
        return True
    config = d / "processor_config.json"
    if not config.is_file():
        return False
    try:
        return "image_processor" in json.loads(config.read_text())
    except ValueError:  # unreadable: the loader's own error says why
        return True


def _load_processor(path: str, trust_remote_code: bool) -> Any:
    """AutoProcessor first; if it fails or returns a bare tokenizer (the stock Qwen processors need
    torchvision for their video processor), the image-only subclass for the model type."""
    register_processors()
    error: Exception | None = None
    try:
        proc = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        if hasattr(proc, "image_processor") and hasattr(proc, "tokenizer"):
            return proc
    except (OSError, ValueError, ImportError, TypeError) as e:
        error = e
    model_type = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
    fallback = IMAGE_ONLY_PROCESSORS.get(model_type)
    if fallback is not None:
        try:
            return fallback.from_pretrained(path)
        except (OSError, ValueError, TypeError) as e:
            error = e
    if not _has_image_processor_config(Path(path)):
        raise ValueError(
            f"no usable image processor in {path!r}: it has no image processor config "
            f"(preprocessor_config.json, or processor_config.json with an image_processor entry), "
            f"which a vision-language model directory keeps next to its tokenizer files; copy them "
            f"from the model it was made from, or pass processor=... to Policy.from_pretrained"
        ) from error
    first_line = str(error).strip().splitlines()[0] if error and str(error).strip() else ""
    raise ValueError(
        f"no usable image processor in {path!r}: a VLM directory needs processor_config.json or "
        f"preprocessor_config.json next to the tokenizer files (pass processor=... to "
        f"Policy.from_pretrained otherwise)"
        + (f"; loading failed with: {first_line}" if error else "")
    ) from error


def _set_pixel_limits(processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Override the Qwen-style resize limits in place (``size`` = {shortest,longest}_edge)."""
    from transformers.image_utils import SizeDict

    ip = processor.image_processor
    size = dict(shortest_edge=ip.size.shortest_edge, longest_edge=ip.size.longest_edge)
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    ip.size = SizeDict(**size)


def keep_4bit_layout(model: torch.nn.Module) -> None:
    """Keep bitsandbytes' 4-bit layers of a policy in the layout that training can use.

    bitsandbytes (0.50.2 at least) on a CPU with AVX512-BF16: the first forward of a
    ``Linear4bit`` in eval mode on an input without grad (``generate``, no-grad scoring) repacks
    its weight, once and for good, into the layout of a fused inference kernel (``gemv_4bit``),
    and every later forward of that layer, training ones included, goes through that kernel. It
    (1) computes in bfloat16 whatever the compute dtype: log-probabilities off by up to 0.06 nats
    on the tiny test model, where sampling and scoring must agree to 1e-4; (2) has no autograd:
    no gradient flows back through the frozen base weight to the adapters below it, silently on
    layers without bias; (3) on layers with a bias fails with "a view of a leaf Variable that
    requires grad is being used in an in-place operation". A policy is sampled and trained with
    the same weights, so each 4-bit layer has the repacking switched off (the per-layer flag
    ``support_avx512bf16_for_cpu`` its forward reads) and is unpacked where it already happened.
    That costs the fused CPU inference kernel (sampling dequantizes as training does) and makes
    such a CPU run exactly what a CPU without AVX512-BF16 runs; nothing changes on GPUs.
    """
    for m in model.modules():
        if not hasattr(m, "support_avx512bf16_for_cpu"):
            continue
        m.support_avx512bf16_for_cpu = False
        weight = m.weight
        state = getattr(weight, "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                weight.data, state
            )


def _nf4_config(dtype: str | torch.dtype) -> Any:
    """bitsandbytes 4-bit NormalFloat (QLoRA, Dettmers et al. 2023), compute in ``dtype``."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("load_in_4bit needs bitsandbytes: pip install 'ivr[qlora]'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32,
    )
