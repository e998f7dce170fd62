"""The containers that flow between the stages of a training step.

    Sample  ──prompt──▶  Prompt  ──rollout──▶  Rollout ×G  ──group──▶  Group
                                                   │ failed (r < τ)
                                                   ▼
                                      critique → rectify (IVR-R1, rl/rectify.py)
                                                   │ accepted
                                                   ▼
                                   Rollout(off_policy=True) replaces the failed one

Everything here is plain data: no model, no tensors that need a device. Stages return new
containers instead of mutating old ones (`dataclasses.replace`), so a step can be replayed and
the traces saved for the rollout inspector are exactly what was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

#: A chat message in the Hugging Face format, e.g.
#: ``{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}``.
Message = dict[str, Any]


@dataclass(frozen=True)
class Sample:
    """One dataset row, as the trainer and the evaluator see it.

    ``answer_type`` is one of ``integer | float | expression | choice | text | boxes`` (None: the
    grader infers it). ``description`` is the ground-truth scene text used by the paper's §5.2
    "description instead of image" ablation; ``boxes``/``labels``/``image_size`` feed the Vision-R1
    localization reward. ``extra`` keeps every other column so reward functions receive them.
    """

    id: str
    question: str
    answer: str
    images: tuple[str, ...] = ()  # file paths (resolved, absolute)
    answer_type: str | None = None
    choices: tuple[str, ...] | None = None
    precision: int | None = None
    unit: str | None = None
    task: str = "default"
    description: str | None = None
    boxes: tuple[tuple[float, float, float, float], ...] | None = None
    labels: tuple[str, ...] | None = None
    image_size: tuple[int, int] | None = None  # (width, height) of the original image
    extra: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> dict[str, Any]:
        """The keyword columns a TRL-style reward function receives for this row."""
        cols = dict(self.extra)
        cols.update(
            answer=self.answer,
            answer_type=self.answer_type,
            choices=list(self.choices) if self.choices is not None else None,
            precision=self.precision,
            unit=self.unit,
            task=self.task,
            description=self.description,
            boxes=[list(b) for b in self.boxes] if self.boxes is not None else None,
            labels=list(self.labels) if self.labels is not None else None,
            image_size=list(self.image_size) if self.image_size is not None else None,
        )
        return cols


@dataclass(frozen=True)
class Prompt:
    """A chat ready for the processor: messages with ``{"type": "image"}`` placeholders and the
    decoded images that fill them, in order. ``len(images)`` must equal the placeholder count."""

    messages: tuple[Message, ...]
    images: tuple[Image.Image, ...] = ()


@dataclass(frozen=True)
class Generation:
    """What the rollout backend returns for one sampled completion.

    ``logprobs[i]`` is log π(token_ids[i]) under the sampling distribution (temperature applied),
    so for μ = 1 it doubles as ``old_logprobs`` and saves a forward pass. When π_old is
    recomputed by the training forward (``rollout/base.py recompute_logprobs``), ``logprobs``
    holds the recomputed values and ``behaviour_logprobs`` keeps the sampler's own;
    ``sampler_logprobs`` is the sampler's either way. ``policy_version`` is the number of
    completed updates of the weights that sampled it, where tracked (``train.staleness: 1``).
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None = None
    finished: bool = True  # False when cut by max_new_tokens
    behaviour_logprobs: tuple[float, ...] | None = None  # the sampler's, if logprobs recomputed
    policy_version: int | None = None  # updates the sampling weights had seen; None = untracked

    @property
    def sampler_logprobs(self) -> tuple[float, ...] | None:
        """log μ(token) as the sampler computed it: the behaviour policy of the importance-
        sampling corrections (rl/importance.py)."""
        return self.logprobs if self.behaviour_logprobs is None else self.behaviour_logprobs


@dataclass(frozen=True)
class Rollout:
    """One response in a group, with its reward and provenance.

    ``off_policy`` marks a rectified trace (IVR-R1): it was generated under a critique/rectify
    prompt but is trained as a response to the ORIGINAL prompt, with policy shaping instead of the
    clipped ratio. ``trace`` keeps the chain (original → critique → rectification …) for logging.

    ``behaviour_logprobs`` are log μ of the tokens under the sampler that drew them (its own
    numbers: another engine's kernels, or stale weights under ``train.staleness: 1``); they equal
    ``old_logprobs`` unless π_old was recomputed by the training forward, and their ratio to
    ``old_logprobs`` is what the mismatch correction (rl/importance.py) weights. None on rectified
    rows (behaviour probability 1). ``policy_version`` = completed updates of the sampling
    weights (None: untracked); at step t a row is ``t − 1 − policy_version`` updates stale.
    """

    sample_index: int  # index of the Sample in the step's batch
    text: str
    token_ids: tuple[int, ...]
    old_logprobs: tuple[float, ...] | None = None
    # log μ from the sampler when it differs from old_logprobs (π_old recomputed): TIS/MIS
    behaviour_logprobs: tuple[float, ...] | None = None
    reward: float = 0.0
    components: dict[str, float] = field(default_factory=dict)
    off_policy: bool = False
    rectify_round: int = 0  # 0 = on-policy sample; t ≥ 1 = accepted after t re-reasoning rounds
    trace: tuple[dict[str, Any], ...] = ()
    behaviour_logprobs: tuple[float, ...] | None = None  # log μ from the sampler (see above)
    policy_version: int | None = None  # completed updates of the weights that sampled it


@dataclass(frozen=True)
class Group:
    """The G responses to one prompt. Advantages are computed over ``rollouts`` as a whole, so
    rectified traces that replaced failed ones count in the group's mean and std."""

    sample: Sample
    rollouts: tuple[Rollout, ...]

    @property
    def rewards(self) -> list[float]:
        return [r.reward for r in self.rollouts]
