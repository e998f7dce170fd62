"""Run configuration: frozen dataclasses, loaded from YAML plus ``section.key=value`` overrides.

One ``Config`` describes a whole run (SFT, GRPO, IVR-R1 or a baseline). It is validated once, when
loaded, with messages that name the key and the file, and never mutated afterwards: a stage that
needs a variant builds one with ``dataclasses.replace``. Defaults are the papers' settings
(IVR-R1 appendix A.1 unless noted); ``configs/*.yaml`` hold the recipes.

    cfg = load_config("configs/grpo_tiny.yaml", ["algo.beta=0.04", "ivr.enabled=true"])

Two keys do more than hold a value: ``algo.name`` selects a preset (``ALGO_PRESETS``) whose values
are the defaults of the loss keys the run does not set itself, and ``reward.functions`` names user
reward callables by import path, imported and checked when the config is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .presets import ALGO_NAMES, ALGO_PRESETS


class ConfigError(ValueError):
    """A configuration problem, with the offending key and where it came from."""


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""  # HF model directory (a local checkpoint; nothing is downloaded)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    attn_implementation: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    gradient_checkpointing: bool = False
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 32
    freeze_vision: bool = False
    load_in_4bit: bool = False  # QLoRA: nf4 base weights, needs lora_rank; 'ivr[qlora]'
    logprob_chunk_size: int = 1024  # positions upcast to float32 at once when scoring; 0 = all


@dataclass(frozen=True)
class DataConfig:
    train: str = ""  # dataset dir, .jsonl or .parquet (see docs/synth.md for the schema)
    eval: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    eval_limit: int | None = None
    on_error: str = "raise"  # raise | skip: what a malformed row does
    prompts: str | None = None  # YAML overriding data/prompts.py


@dataclass(frozen=True)
class RolloutConfig:
    group_size: int = 8  # G (IVR-R1 A.1)
    temperature: float = 1.0
    top_p: float = 0.99
    max_new_tokens: int = 512
    backend: str = "hf"  # hf | vllm (pip install 'ivr[vllm]'; docs/scaling.md "Rollout backends")
    # old_logprobs from a no-grad HF forward instead of the sampler's: auto = on for vllm, off for
    # hf (whose sampling logprobs are the training forward's, tested to 1e-4)
    recompute_logprobs: bool | str = "auto"  # auto | true | false
    # rollout-training mismatch correction on the sampler/π_old ratio (rl/importance.py): auto =
    # tis for a sampler whose logprobs are not the training forward's (vllm), none for hf;
    # tis/mis with hf recomputes π_old (one no-grad forward) so there is something to correct
    is_correction: str = "auto"  # auto | none | tis | mis
    is_cap: float = 2.0  # C: TIS truncates the ratio at C, MIS drops tokens above it
    is_level: str = "token"  # token | sequence (the product of the row's token ratios)
    # the re-reasoning loop's calls reuse the previous call's prompt KV where prompts share a
    # prefix (HF backend; models/prompt_cache.py): false saves one prompt cache of memory
    reuse_prompt_kv: bool = True
    vllm_gpu_memory_utilization: float = 0.3  # vLLM's share of the GPU (its weights + KV cache)
    vllm_max_model_len: int | None = None  # prompt + completion tokens; None = the model's
    vllm_sleep_mode: bool = False  # offload vLLM's weights and drop its KV cache between calls


@dataclass(frozen=True)
class RewardFunction:
    """A user reward added to the score: ``fn`` names a TRL-style callable
    ``fn(completions, **columns) -> list[float | None]`` as ``package.module:attribute``, and
    ``weight`` multiplies it (exactly ``Trainer(extra_rewards=[(fn, weight)])``)."""

    fn: str = ""  # "my_pkg.rewards:length_penalty"
    weight: float = 1.0

    def load(self) -> Callable[..., Any]:
        """Import the callable ``fn`` names; ValueError saying what is wrong."""
        module_name, sep, attr = self.fn.partition(":")
        if not sep or not module_name.strip() or not attr.strip():
            raise ValueError("must name a callable as package.module:attribute")
        try:
            obj: Any = importlib.import_module(module_name.strip())
        except Exception as e:  # ImportError, or the module raised while importing
            raise ValueError(
                f"module {module_name.strip()!r} cannot be imported ({type(e).__name__}: {e})"
            ) from None
        for part in attr.strip().split("."):
            if not hasattr(obj, part):
                raise ValueError(f"{getattr(obj, '__name__', obj)!r} has no attribute {part!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise ValueError(f"{attr.strip()!r} is a {type(obj).__name__}, not callable")
        return obj


@dataclass(frozen=True)
class RewardConfig:
    format_weight: float = 0.1  # λ in r = λ·r_format + (1−λ)·r_acc (IVR-R1 A.1)
    loc_switch_at: float = 0.5  # Vision-R1 staged progression STEP (1.0 = never switch)
    self_reward_weight: float = 0.0  # Vision-SR1 baseline: + w·acc(answer from <desc> alone)
    # user rewards added with their weights: [{fn: "my_pkg.rewards:length_penalty", weight: 0.1}]
    functions: tuple[RewardFunction, ...] = ()

    def resolved_functions(self) -> tuple[tuple[Callable[..., Any], float], ...]:
        """``functions`` as ``(callable, weight)`` pairs, the form of ``Trainer(extra_rewards=)``."""
        return tuple((f.load(), f.weight) for f in self.functions)


@dataclass(frozen=True)
class AlgoConfig:
    # selects a preset of ALGO_PRESETS: its values are the defaults of the loss keys (beta, clips,
    # aggregation, scale_advantages) the run does not set; IVR-R1 itself is ivr.enabled
    name: str = "grpo"  # grpo | ivr | ivr_r1 | dapo | dr_grpo | deepseekmath | gspo | cispo | sapo
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine
    max_grad_norm: float = 1.0
    beta: float = 0.0  # KL weight to the reference model (k3)
    clip_low: float = 0.2
    clip_high: float = 0.2  # DAPO clip-higher: 0.28
    scale_advantages: bool = True  # False = Dr.GRPO (no std division)
    aggregation: str = "token"  # token | sequence | dr_grpo
    loss: str = "grpo"  # on-policy surrogate: grpo | gspo | cispo | sapo (rl/losses.py)
    sapo_tau_pos: float = 1.0  # SAPO gate temperature where Â > 0
    sapo_tau_neg: float = 1.05  # ... and where Â <= 0
    # ρ: policy gradient on the top-ρ share of tokens by entropy (Wang et al. 2025); 1.0 = off
    top_entropy_quantile: float = 1.0
    ppo_epochs: int = 1  # μ: optimisation passes per batch
    minibatch_size: int = 0  # sequences per optimiser step; 0 = the whole batch
    micro_batch_size: int = 8  # sequences per forward (gradient accumulation)
    # DAPO (arXiv:2503.14476; rl/filters.py): drop groups whose rewards are all equal (after
    # rectification and self-reward) and draw the next prompts until the batch is full
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3  # collections per step at most, the first included
    overlong: str = "none"  # none | filter (truncated rows out of the loss) | soft (DAPO penalty)
    overlong_buffer: int = 0  # L_cache of the soft penalty; 0 = rollout.max_new_tokens // 5


@dataclass(frozen=True)
class IVRConfig:
    enabled: bool = False
    tau: float = 0.5  # τ: screening threshold, r < τ = failed (IVR-R1 §3.2)
    k: int = 2  # critiqued failures per group (ablations 1, 4)
    rounds: int = 3  # T: re-reasoning rounds (paper Fig. 5)
    shaping: bool = True  # f(p) = p/(p+γ) on off-policy tokens (eq. 3.7); false = plain p (LUFFY)
    gamma: float = 0.1  # γ in f(p) = p/(p+γ) (LUFFY)
    context: str = "image"  # image | description (paper §5.2)
    # description context: own = the critiqued response's <desc>; dataset = the true scene (leaks)
    description_source: str = "own"  # own | dataset
    # acceptance of a rectified answer (rl/rectify.py ACCEPT): correct_format = right answer AND
    # valid format (spec); reward = r ≥ τ; grounded = correct_format AND <desc> = the true scene
    accept: str = "correct_format"  # correct_format | reward | grounded | correct
    # rectify = IVR-R1; resample = control: fresh samples of the original prompt, same budget
    strategy: str = "rectify"  # rectify | resample
    critique_max_new_tokens: int = 256
    critique_temperature: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/ivr"
    seed: int = 0
    steps: int = 0  # 0 = one epoch over the training set
    prompts_per_step: int = 16
    save_every: int = 50
    eval_every: int = 0  # 0 = never during training
    # false: a fresh run (refused if output_dir holds one: metrics.jsonl or checkpoints/);
    # true: continue from the last intact checkpoint (an error if there is none);
    # auto: continue if there is a checkpoint, else start fresh (clearing the old run's files)
    resume: bool | str = False  # false | true | auto
    overwrite: bool = False  # start fresh in an output_dir that holds a run: its files are removed
    # consecutive steps whose update was skipped (every group's reward NaN/inf) before the run
    # fails naming the reward; 0 = never fail
    max_skipped_steps: int = 5
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    sharding: str = "auto"  # auto (follow `accelerate launch`) | none (data parallel) | fsdp
    # 0 = synchronous (sample step t with the weights of step t); 1 = one-step off-policy overlap:
    # step t+1's batch is sampled by a weight snapshot while step t updates (docs/scaling.md)
    staleness: int = 0  # 0 | 1


@dataclass(frozen=True)
class SFTConfig:
    """Cold start (IVR-R1 §4.1; Vision-SR1-style demonstrations): loss on assistant tokens only."""

    data: str = ""  # chat-rows JSONL (``sft.jsonl`` of ``ivr synth``) or a dataset dir holding one
    steps: int = 0  # 0 = ``epochs`` passes over the data
    epochs: float = 1.0
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    lr_schedule: str = "cosine"  # constant | cosine
    max_grad_norm: float = 1.0
    eval_every: int = 0  # 0 = only at the end
    eval_limit: int = 256
    save_every: int = 500


@dataclass(frozen=True)
class LogConfig:
    jsonl: bool = True
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "ivr"
    samples_per_step: int = 4  # completions saved per step for inspection
    progress: bool = True


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    ivr: IVRConfig = field(default_factory=IVRConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists (YAML- and JSON-safe; ``config_from_dict`` reads it back)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


#: Keys that once existed, with what to do instead: an old run's config.yaml still loads.
_REMOVED = {
    "reward.localization": "it was never read: the Vision-R1 reward always scores rows whose "
    "answer_type is boxes (reward.loc_switch_at sets its staging); the key is ignored",
}

_CHOICES = {
    "algo.name": ALGO_NAMES,
    "model.dtype": {"float32", "bfloat16", "float16"},
    "data.on_error": {"raise", "skip"},
    "rollout.backend": {"hf", "vllm"},
    "train.sharding": {"auto", "none", "fsdp"},
    "algo.lr_schedule": {"constant", "cosine"},
    "sft.lr_schedule": {"constant", "cosine"},
    "algo.aggregation": {"token", "sequence", "dr_grpo"},
    "algo.overlong": {"none", "filter", "soft"},
    "algo.loss": {"grpo", "gspo", "cispo", "sapo"},  # = rl.losses._VARIANTS
    "rollout.is_correction": {"auto", "none", "tis", "mis"},
    "rollout.is_level": {"token", "sequence"},
    "ivr.context": {"image", "description"},
    "ivr.description_source": {"own", "dataset"},
    "ivr.accept": {"correct_format", "reward", "grounded", "correct"},  # = rl.rectify.ACCEPT
    "ivr.strategy": {"rectify", "resample"},
}


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotated type; YAML ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: `{key}` = {value!r} should be {tp}")
    if origin is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: `{key}` = {value!r} should be a list")
        items = []
        for i, item in enumerate(value):
            if isinstance(item, item_tp):
                item = dataclasses.asdict(item)
            if not isinstance(item, dict):
                raise ConfigError(
                    f"{where}: `{key}[{i}]` = {item!r} should be a mapping of "
                    f"{item_tp.__name__} fields {[f.name for f in fields(item_tp)]}"
                )
            items.append(_build(item_tp, item, f"{key}[{i}].", where))
        return tuple(items)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads `2e-5` as a string; accept what any user means by it.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: `{key}` = {value!r} should be true or false")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: `{key}` = {value!r} should be an integer")
    if isinstance(tp, type) and not isinstance(value, tp):
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"{where}: `{key}` = {value!r} should be of type {name}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for name in sorted(set(data) - known):
        if f"{prefix}{name}" in _REMOVED:
            warnings.warn(f"{where}: `{prefix}{name}`: {_REMOVED[prefix + name]}", stacklevel=3)
            data = {k: v for k, v in data.items() if k != name}
    unknown = sorted(set(data) - known)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{where}: unknown key `{key}`; known keys here: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: `{key}` should be a mapping of {tp.__name__} fields")
            kwargs[name] = _build(tp, value, f"{key}.", where)
        else:
            kwargs[name] = _coerce(value, tp, key, where)
    return cls(**kwargs)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override `{dotted}`: `{part}` is not a section")
    node[parts[-1]] = value


def validate(cfg: Config, where: str = "config") -> Config:
    """Cross-field checks that types alone cannot express."""
    flat = {f"{s}.{k}": v for s, sec in cfg.to_dict().items() for k, v in sec.items()}
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(
                f"{where}: `{key}` = {flat[key]!r}; expected one of {sorted(allowed)}"
            )
    checks = [
        (
            "rollout.group_size",
            cfg.rollout.group_size >= 2,
            "must be ≥ 2 (GRPO's advantages compare the samples of a group: one sample has "
            "nothing to compare with, so every advantage would be 0)",
        ),
        ("rollout.max_new_tokens", cfg.rollout.max_new_tokens >= 1, "must be ≥ 1"),
        ("rollout.temperature", cfg.rollout.temperature >= 0, "must be ≥ 0"),
        ("rollout.top_p", 0 < cfg.rollout.top_p <= 1, "must be in (0, 1]"),
        (
            "rollout.recompute_logprobs",
            isinstance(cfg.rollout.recompute_logprobs, bool)
            or cfg.rollout.recompute_logprobs == "auto",
            "must be auto, true or false",
        ),
        (
            "rollout.vllm_gpu_memory_utilization",
            0 < cfg.rollout.vllm_gpu_memory_utilization <= 1,
            "must be in (0, 1]",
        ),
        (
            "rollout.vllm_max_model_len",
            cfg.rollout.vllm_max_model_len is None or cfg.rollout.vllm_max_model_len >= 1,
            "must be ≥ 1 (or null for the model's own)",
        ),
        ("reward.format_weight", 0 <= cfg.reward.format_weight <= 1, "must be in [0, 1]"),
        ("reward.loc_switch_at", 0 <= cfg.reward.loc_switch_at <= 1, "must be in [0, 1]"),
        ("model.logprob_chunk_size", cfg.model.logprob_chunk_size >= 0, "must be ≥ 0"),
        (
            "model.load_in_4bit",
            not cfg.model.load_in_4bit or cfg.model.lora_rank > 0,
            "needs model.lora_rank > 0 (QLoRA trains LoRA adapters on frozen 4-bit weights)",
        ),
        ("algo.lr", cfg.algo.lr >= 0, "must be ≥ 0"),
        ("algo.weight_decay", cfg.algo.weight_decay >= 0, "must be ≥ 0"),
        ("algo.warmup_steps", cfg.algo.warmup_steps >= 0, "must be ≥ 0"),
        (
            "algo.max_grad_norm",
            cfg.algo.max_grad_norm > 0,
            "must be > 0 (gradients are clipped to this norm; 0 would zero every update)",
        ),
        ("algo.beta", cfg.algo.beta >= 0, "must be ≥ 0"),
        (
            "algo.clip_low",
            0 <= cfg.algo.clip_low < 1 or (cfg.algo.loss == "cispo" and cfg.algo.clip_low >= 1),
            "must be in [0, 1) (only algo.loss=cispo takes clip_low ≥ 1: no lower bound)",
        ),
        ("algo.sapo_tau_pos", cfg.algo.sapo_tau_pos > 0, "must be > 0"),
        ("algo.sapo_tau_neg", cfg.algo.sapo_tau_neg > 0, "must be > 0"),
        (
            "algo.top_entropy_quantile",
            0 < cfg.algo.top_entropy_quantile <= 1,
            "must be in (0, 1]: the share of tokens trained, by entropy (1 = all, off)",
        ),
        ("rollout.is_cap", cfg.rollout.is_cap >= 1, "must be ≥ 1 (C caps π_old/μ; 1 = no boost)"),
        (
            "rollout.is_correction",
            cfg.rollout.is_correction in ("auto", "none")
            or cfg.rollout.recompute_logprobs is not False,
            "needs π_old from a training forward, which rollout.recompute_logprobs=false turns "
            "off (the ratio would be 1 everywhere): drop one of the two",
        ),
        ("algo.clip_high", cfg.algo.clip_high >= 0, "must be ≥ 0"),
        ("algo.ppo_epochs", cfg.algo.ppo_epochs >= 1, "must be ≥ 1"),
        ("algo.micro_batch_size", cfg.algo.micro_batch_size >= 1, "must be ≥ 1"),
        (
            "algo.max_sampling_rounds",
            cfg.algo.max_sampling_rounds >= 1,
            "must be ≥ 1 (collections per step under algo.dynamic_sampling, the first included)",
        ),
        (
            "algo.overlong_buffer",
            0 <= cfg.algo.overlong_buffer <= cfg.rollout.max_new_tokens,
            f"must be in [0, rollout.max_new_tokens = {cfg.rollout.max_new_tokens}] (L_cache of "
            "DAPO's soft overlong penalty: lengths above max_new_tokens − L_cache are penalised; "
            "0 = max_new_tokens // 5)",
        ),
        (
            "ivr.tau",
            0 < cfg.ivr.tau <= 1,
            "must be in (0, 1]: rollouts are screened as failed when their task reward "
            "(λ·format + (1−λ)·accuracy, in [0, 1]) is below τ",
        ),
        ("ivr.k", cfg.ivr.k >= 1, "must be ≥ 1"),
        ("ivr.rounds", cfg.ivr.rounds >= 1, "must be ≥ 1"),
        ("ivr.gamma", cfg.ivr.gamma > 0, "must be > 0"),
        ("ivr.critique_max_new_tokens", cfg.ivr.critique_max_new_tokens >= 1, "must be ≥ 1"),
        ("sft.steps", cfg.sft.steps >= 0, "must be ≥ 0 (0 = sft.epochs passes over the data)"),
        ("sft.epochs", cfg.sft.epochs > 0, "must be > 0"),
        ("sft.lr", cfg.sft.lr >= 0, "must be ≥ 0"),
        ("sft.weight_decay", cfg.sft.weight_decay >= 0, "must be ≥ 0"),
        ("sft.warmup_steps", cfg.sft.warmup_steps >= 0, "must be ≥ 0"),
        ("sft.eval_every", cfg.sft.eval_every >= 0, "must be ≥ 0"),
        ("sft.save_every", cfg.sft.save_every >= 0, "must be ≥ 0"),
        ("sft.batch_size", cfg.sft.batch_size >= 1, "must be ≥ 1"),
        ("sft.grad_accum", cfg.sft.grad_accum >= 1, "must be ≥ 1"),
        ("train.steps", cfg.train.steps >= 0, "must be ≥ 0 (0 = one epoch over the data)"),
        ("train.prompts_per_step", cfg.train.prompts_per_step >= 1, "must be ≥ 1"),
        ("train.save_every", cfg.train.save_every >= 0, "must be ≥ 0"),
        ("train.eval_every", cfg.train.eval_every >= 0, "must be ≥ 0"),
        ("train.resume", cfg.train.resume in (True, False, "auto"), "must be false, true or auto"),
        (
            "train.overwrite",
            not (cfg.train.overwrite and cfg.train.resume is not False),
            "cannot be combined with train.resume (overwrite starts a fresh run)",
        ),
        ("train.max_skipped_steps", cfg.train.max_skipped_steps >= 0, "must be ≥ 0"),
        (
            "train.staleness",
            cfg.train.staleness in (0, 1),
            "must be 0 (synchronous) or 1 (one-step off-policy overlap)",
        ),
        (
            "train.staleness",
            cfg.train.staleness == 0 or cfg.rollout.backend == "hf",
            "needs rollout.backend = hf: the overlap samples with a snapshot of the HF model in a "
            "thread (a vLLM engine colocated with training would need its own GPUs)",
        ),
        (
            "train.staleness",
            cfg.train.staleness == 0 or not cfg.model.load_in_4bit,
            "cannot be combined with model.load_in_4bit (the 4-bit weights are not copied into "
            "a snapshot)",
        ),
        (
            "train.staleness",
            cfg.train.staleness == 0 or cfg.train.sharding != "fsdp",
            "cannot be combined with train.sharding = fsdp (the snapshot needs full weights)",
        ),
    ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{where}: `{key}` = {flat[key]!r} {why}")
    batch = cfg.train.prompts_per_step * cfg.rollout.group_size
    if cfg.algo.minibatch_size and batch % cfg.algo.minibatch_size:
        raise ConfigError(
            f"{where}: `algo.minibatch_size` = {cfg.algo.minibatch_size} must divide the batch of "
            f"train.prompts_per_step × rollout.group_size = {batch} sequences"
        )
    for i, fn in enumerate(cfg.reward.functions):
        key = f"reward.functions[{i}]"
        if not math.isfinite(fn.weight):
            raise ConfigError(f"{where}: `{key}.weight` = {fn.weight!r} must be a finite number")
        try:
            fn.load()
        except ValueError as e:
            raise ConfigError(f"{where}: `{key}.fn` = {fn.fn!r}: {e}") from None
    return cfg


def _with_algo_preset(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the ``algo.name`` preset filling the algo keys it does not set.

    An unknown name is left for ``validate`` to report (with the known names)."""
    algo = data.get("algo", {})
    if not isinstance(algo, dict):
        return data  # _build reports it
    name = algo.get("name", AlgoConfig.name)
    preset = ALGO_PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        return data
    return {**data, "algo": {**preset, **algo}}


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["algo.beta=0.04", "ivr.enabled=true"]`` → nested dict; values parsed as YAML scalars."""
    data: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override `{item}` should look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override `{item}`: value is not valid YAML ({e})") from None
        _set_path(data, key.strip(), value)
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Read a YAML recipe (or start from defaults), apply overrides, validate once."""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level should be a mapping of sections")
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        where = f"{where} (with overrides)"
    return validate(_build(Config, _with_algo_preset(data), "", where), where)


def config_from_dict(data: dict[str, Any], where: str = "config") -> Config:
    """The inverse of ``Config.to_dict``, validated (used to ship configs to worker processes)."""
    return validate(_build(Config, _with_algo_preset(data), "", where), where)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config next to a run, so it can be reloaded with ``load_config``."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
