"""The vLLM rollout backend (``rollout.backend: vllm``; ``pip install 'ivr[vllm]'``, a CUDA GPU).

``VLLMBackend`` runs a vLLM engine in the trainer's own process on the same GPU ("colocate", as
TRL's ``vllm_mode="colocate"``), holding its own copy of the weights in
``rollout.vllm_gpu_memory_utilization`` of the GPU memory (weights + KV cache). After each update
the new weights are streamed into the engine's model (``load_weights``, one tensor at a time, HF
names: vLLM maps them). Under LoRA the merged weights W + ΔW are computed per layer without
touching the training weights (no merge/unmerge round trip, which drifts in bf16). Only what can
have changed is sent after the first sync (trainable parameters; under LoRA the adapted layers),
and the engine's prefix cache is reset so no KV computed by old weights is reused.

Its logprobs do not match the training forward (``logprobs_match_training = False``): they come
from other kernels and, in "processed" mode, from the top-p *truncated* distribution, so with
``rollout.recompute_logprobs: auto`` the trainer recomputes π_old with the HF policy
(``ivr.rollout.base``). The samples themselves remain vLLM's (off by kernel noise from the HF
policy, which the clipped ratio covers).

The pure parts (request building, output conversion, banned tokens, weight names, merged LoRA
weights) are plain functions, tested without vLLM; everything that imports vLLM is inside
``VLLMBackend`` and exercised only where vLLM and a GPU are present.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..models.policy import count_image_placeholders
from ..models.processor import register_processors
from ..types import Generation, Prompt

if TYPE_CHECKING:
    from ..config import Config
    from ..models.policy import Policy

__all__ = [
    "VLLMBackend",
    "banned_token_params",
    "build_request",
    "merged_named_weights",
    "sampling_kwargs",
    "to_generations",
    "vllm_weight_name",
]

_INSTALL_HINT = (
    "rollout.backend=vllm needs vLLM and a CUDA GPU: pip install 'ivr[vllm]' on a machine with "
    "one (or set rollout.backend=hf)"
)


def build_request(processor: Any, prompt: Prompt) -> dict[str, Any]:
    """One of our prompts as a vLLM request: the chat-templated text (one ``<|image_pad|>`` per
    image; vLLM expands it to the image's token count) plus the PIL images, in order."""
    n = count_image_placeholders(prompt.messages)
    if n != len(prompt.images):
        raise ValueError(
            f"{n} image placeholder(s) in the messages but {len(prompt.images)} image(s) given"
        )
    text = processor.apply_chat_template(
        list(prompt.messages), tokenize=False, add_generation_prompt=True
    )
    request: dict[str, Any] = {"prompt": text}
    if prompt.images:
        images = list(prompt.images)
        request["multi_modal_data"] = {"image": images[0] if len(images) == 1 else images}
    return request


def banned_token_params(tokenizer: Any, banned: Sequence[int]) -> dict[str, Any]:
    """SamplingParams fields that forbid the ``banned`` token ids (the policy's
    ``suppressed_token_ids``: image/vision special tokens, pad), exactly those and no others.

    vLLM bans *strings* (``bad_words``: each is tokenized, and a one-token word is banned
    everywhere). When every banned id is a token whose string encodes back to that single id —
    true of Qwen's special tokens — ``bad_words`` does it. Otherwise the complement
    ``allowed_token_ids`` over the tokenizer's vocabulary is used (one list per request, heavier).
    """
    banned = sorted(set(int(i) for i in banned))
    if not banned:
        return {}
    words = []
    for i in banned:
        word = tokenizer.convert_ids_to_tokens(i)
        if not isinstance(word, str) or tokenizer.encode(word, add_special_tokens=False) != [i]:
            break
        words.append(word)
    else:
        return {"bad_words": words}
    drop = set(banned)
    return {"allowed_token_ids": [i for i in range(len(tokenizer)) if i not in drop]}


def sampling_kwargs(
    *,
    n: int,
    temperature: float,
    top_p: float,
    top_k: int,
    max_new_tokens: int,
    stop_token_ids: Sequence[int],
    seed: int | None,
    banned: dict[str, Any],
) -> dict[str, Any]:
    """``SamplingParams(**kwargs)`` for one prompt, matching ``Policy.generate``: temperature,
    top-p/top-k, no repetition penalty, stop at the policy's eos ids, the vision tokens banned,
    and the logprob of the sampled token (``logprobs=0``). ``temperature <= 0`` is greedy."""
    greedy = temperature <= 0
    kw: dict[str, Any] = {
        "n": 1 if greedy else n,
        "temperature": 0.0 if greedy else float(temperature),
        "top_p": 1.0 if greedy else float(top_p),
        "max_tokens": int(max_new_tokens),
        "stop_token_ids": list(stop_token_ids),
        "repetition_penalty": 1.0,
        "logprobs": 0,
        "skip_special_tokens": True,
        **banned,
    }
    if top_k > 0 and not greedy:
        kw["top_k"] = int(top_k)
    if seed is not None:
        kw["seed"] = int(seed)  # vLLM gives child j of an n-sample request seed + j
    return kw


def to_generations(
    request_output: Any, *, eos_ids: Sequence[int], decode: Callable[[list[int]], str]
) -> list[Generation]:
    """A vLLM ``RequestOutput`` → our ``Generation`` per sample, in sample order.

    Same conventions as ``Policy.generate``: token ids cut after the first eos (kept); ``finished``
    when an eos was produced (or vLLM says it stopped); ``text`` decoded by ``decode`` (the
    policy's tokenizer, special tokens skipped), so both backends give the same text for the same
    ids; ``logprobs`` the sampled tokens' (None when vLLM returned none).
    """
    eos = set(eos_ids)
    gens = []
    for out in sorted(request_output.outputs, key=lambda o: o.index):
        ids = [int(t) for t in out.token_ids]
        end = next((j for j, t in enumerate(ids) if t in eos), None)
        if end is not None:
            ids = ids[: end + 1]
        logprobs = None
        if out.logprobs is not None:
            logprobs = tuple(float(step[t].logprob) for step, t in zip(out.logprobs, ids))
            if len(logprobs) != len(ids):
                raise ValueError(f"vLLM returned {len(logprobs)} logprobs for {len(ids)} tokens")
        finished = end is not None or getattr(out, "finish_reason", None) == "stop"
        gens.append(
            Generation(text=decode(ids), token_ids=tuple(ids), logprobs=logprobs, finished=finished)
        )
    return gens


def vllm_weight_name(name: str) -> str | None:
    """An HF/peft parameter name → the name vLLM's ``load_weights`` takes (the checkpoint's;
    vLLM maps checkpoint names to its own modules), or None for adapter-only tensors.

    >>> vllm_weight_name("base_model.model.model.language_model.layers.0.mlp.up_proj.base_layer.weight")
    'model.language_model.layers.0.mlp.up_proj.weight'
    >>> vllm_weight_name("base_model.model.model.language_model.layers.0.mlp.up_proj.lora_A.default.weight") is None
    True
    >>> vllm_weight_name("lm_head.weight")
    'lm_head.weight'
    """
    name = name.removeprefix("base_model.model.")
    parts = name.split(".")
    if any(p.startswith("lora_") for p in parts) or "original_module" in parts:
        return None
    for wrapper in ("base_layer.", "modules_to_save.default.", "_checkpoint_wrapped_module."):
        name = name.replace(wrapper, "")
    return name


def merged_named_weights(
    model: torch.nn.Module, *, changed_only: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """(vLLM name, tensor) for the weights the sampler must hold, one at a time (streamed).

    Under peft LoRA each adapted layer yields W + ΔW (``get_delta_weight`` of its active
    adapters), computed on the fly: the training weights are never merged in place. With
    ``changed_only`` only what an update can change is yielded: trainable parameters (plain
    model) or the adapted layers' merged weights and any trainable non-adapter parameter (LoRA).
    """
    lora_layers = {
        name: m
        for name, m in model.named_modules()
        if hasattr(m, "base_layer") and hasattr(m, "get_delta_weight") and hasattr(m, "lora_A")
    }
    with torch.no_grad():
        for pname, param in model.named_parameters():
            target = vllm_weight_name(pname)
            if target is None:
                continue
            owner, _, leaf = pname.rpartition(".")
            layer_name = owner.removesuffix(".base_layer")
            layer = lora_layers.get(layer_name) if owner.endswith(".base_layer") else None
            if layer is not None and leaf == "weight":
                if hasattr(param, "full_tensor"):
                    raise NotImplementedError("weight sync of FSDP-sharded LoRA layers to vLLM")
                yield target, _merged_weight(layer, param)
            elif not changed_only or param.requires_grad:
                # FSDP2 shards are DTensors: gather each one (every rank runs the same loop)
                full = param.full_tensor() if hasattr(param, "full_tensor") else param
                yield target, full.detach()


def _merged_weight(layer: Any, weight: torch.Tensor) -> torch.Tensor:
    if getattr(layer, "merged", False):  # adapters already merged in place: W holds ΔW
        return weight.detach()
    out = weight.detach()
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if getattr(layer, "use_dora", {}).get(adapter, False):
            raise NotImplementedError("weight sync to vLLM does not support DoRA adapters")
        out = out + layer.get_delta_weight(adapter).to(out.dtype)
    return out


# ====================================================================== vLLM
class VLLMBackend:
    """A vLLM engine colocated with training: same process, same GPU, its own weight copy.

    ``gpu_memory_utilization`` is vLLM's share of the whole GPU (its weights + KV cache); the
    training model, gradients and optimizer states must fit in the rest. ``sleep_mode`` offloads
    the engine's weights to CPU and drops its KV cache between generate calls (level 1), at the
    cost of copying the weights back before each call and each sync. Tensor parallelism is not
    supported (one engine per training process).
    """

    shares_policy_weights = False  # its own copy, refreshed by ``sync_weights``
    logprobs_match_training = False  # other kernels, truncated distribution: recompute π_old

    def __init__(
        self,
        policy: Policy,
        model_path: str,
        *,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        sleep_mode: bool = False,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        seed: int = 0,
    ) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ImportError(f"{_INSTALL_HINT}; importing vllm failed: {e}") from e
        if not torch.cuda.is_available():
            raise RuntimeError(f"{_INSTALL_HINT}; torch sees no CUDA device here")
        from accelerate import PartialState

        register_processors()  # the engine's AutoProcessor may meet an image-only class

        self.policy = policy
        self._sampling_params = vllm.SamplingParams
        state = PartialState()
        # An in-process engine ("external_launcher"): its model object is reachable for weight
        # sync, and each training process drives its own engine on its own GPU (TRL colocate).
        os.environ.setdefault("RANK", str(state.process_index))
        os.environ.setdefault("LOCAL_RANK", str(state.local_process_index))
        os.environ.setdefault("WORLD_SIZE", str(state.num_processes))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        mm_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        self.llm = vllm.LLM(
            model=str(model_path),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_sleep_mode=sleep_mode,
            distributed_executor_backend="external_launcher",
            seed=seed + state.process_index,
            generation_config="vllm",  # not the checkpoint's defaults (e.g. Qwen's penalty 1.05)
            # sampled-token logprobs after the banned-token mask, temperature and top-p (the
            # default, "raw", is before all of them); informative only when recomputed
            logprobs_mode="processed_logprobs",
            mm_processor_kwargs=mm_kwargs or None,
        )
        self.sleep_mode = sleep_mode
        self._asleep = False
        self._banned = banned_token_params(policy.tokenizer, policy.suppressed_token_ids)
        self._synced = False
        # The engine loaded model_path; the policy may differ (resumed run, LoRA adapter):
        # send everything once.
        self.sync_weights(policy.model)

    @classmethod
    def from_config(cls, cfg: Config, policy: Policy) -> VLLMBackend:
        """An engine built from ``model.path`` with the ``rollout.vllm_*`` settings."""
        if not cfg.model.path:
            raise ValueError(
                "rollout.backend=vllm builds its engine from model.path, which is empty (a policy "
                "passed in directly has no checkpoint vLLM could load)"
            )
        return cls(
            policy,
            cfg.model.path,
            dtype=cfg.model.dtype,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
            max_model_len=cfg.rollout.vllm_max_model_len,
            sleep_mode=cfg.rollout.vllm_sleep_mode,
            min_pixels=cfg.model.min_pixels,
            max_pixels=cfg.model.max_pixels,
            seed=cfg.train.seed,
        )

    # ------------------------------------------------------------------ sampling
    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        num_return_sequences: int = 1,
        seed: int | None = None,
    ) -> list[list[Generation]]:
        if not prompts:
            return []
        greedy = temperature <= 0
        n = 1 if greedy else num_return_sequences
        if seed is None:  # from torch's RNG: the trainer's per-step seeding makes runs replayable
            seed = int(torch.randint(0, 2**31 - 1 - n * len(prompts), ()).item())
        requests = [build_request(self.policy.processor, p) for p in prompts]
        params = [
            self._sampling_params(
                **sampling_kwargs(
                    n=n,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=top_k,
                    max_new_tokens=max_new_tokens,
                    stop_token_ids=self.policy.eos_token_ids,
                    seed=seed + i * n,
                    banned=self._banned,
                )
            )
            for i in range(len(prompts))
        ]
        self._wake()
        try:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        finally:
            self._sleep()
        tok = self.policy.tokenizer

        def decode(ids: list[int]) -> str:
            return tok.decode(ids, skip_special_tokens=True)

        gens = [
            to_generations(o, eos_ids=self.policy.eos_token_ids, decode=decode) for o in outputs
        ]
        if greedy:
            return [[g[0]] * num_return_sequences for g in gens]
        return gens

    # ------------------------------------------------------------------ weights
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Stream the (merged) weights into the engine, then drop caches computed with old ones."""
        self._wake()
        try:
            weights = merged_named_weights(model, changed_only=self._synced)
            target = self._engine_model()
            if target is not None:
                target.load_weights(weights)
            else:  # engine internals moved: go through the workers' RPC (in-process here)
                self.llm.collective_rpc(_load_weights_rpc, args=(list(weights),))
            self.llm.reset_prefix_cache()
            if hasattr(self.llm, "reset_mm_cache"):
                self.llm.reset_mm_cache()
            self._synced = True
        finally:
            self._sleep()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        del llm
        import gc

        gc.collect()
        torch.cuda.empty_cache()

    # ------------------------------------------------------------------ internals
    def _engine_model(self) -> Any:
        """The engine's ``nn.Module`` (``load_weights`` takes checkpoint-named tensors), or None."""
        try:
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        except AttributeError:
            return None
        return runner.get_model() if hasattr(runner, "get_model") else runner.model

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _sleep(self) -> None:
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)  # weights kept (offloaded): changed-only syncs stay valid
            self._asleep = True


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load_weights_rpc(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    runner = worker.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    model.load_weights(weights)
