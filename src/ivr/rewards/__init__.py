"""Rewards: pure, TRL-compatible reward functions and the graders behind them.

Contract: every reward is ``fn(completions, **columns) -> list[float | None]``. ``completions``
are strings or chat message lists; dataset columns arrive as keyword lists aligned with them;
``None`` means "not applicable to this sample"; extra keyword arguments are ignored; training
progress arrives as ``progress`` in [0, 1]. Rewards never raise on model output (malformed output
scores 0); they raise ValueError, naming the field, on malformed ground truth or configuration.

- ``accuracy_reward``, ``format_reward`` and their mix ``combined_reward`` (IVR-R1, appendix A.1);
- ``localization_reward`` (Vision-R1 §3.2-3.3: dual format + recall + precision, staged);
- ``score_file`` grades a JSONL of predictions offline (``ivr score FILE``);
- ``scorer.Scorer``: the one reward of a (sample, completion) pair that training, the IVR loop,
  SFT and eval all use (imported from ``ivr.rewards.scorer``: it needs ``ivr.types``).

Modules: ``extract`` (the answer out of a completion), ``normalize`` (LaTeX/number
normalisation), ``expression`` (bounded math-verify), ``grader_worker`` (its subprocess),
``answer`` (graders per answer type, ``accuracy_reward``), ``format``, ``composite``,
``localization``, ``score`` (offline files), ``scorer``.
"""

from ivr.rewards.answer import (
    ANSWER_TYPES,
    accuracy_reward,
    grade_answer,
    grade_choice,
    grade_float,
    grade_integer,
    grade_text,
    infer_answer_type,
)
from ivr.rewards.composite import (
    DEFAULT_LAMBDA,
    CombinedReward,
    RewardFn,
    combined_reward,
    make_combined_reward,
)
from ivr.rewards.expression import grade_expression
from ivr.rewards.extract import completion_text, extract_boxed
from ivr.rewards.format import DEFAULT_TAGS, format_reward, format_score, make_format_reward
from ivr.rewards.localization import (
    LocalizationConfig,
    LocalizationReward,
    differentiate,
    giou,
    iou,
    iou_matrix,
    localization_reward,
    make_localization_reward,
    match_boxes,
    parse_boxes,
    rescale_boxes,
    score_localization,
)
from ivr.rewards.normalize import parse_number
from ivr.rewards.score import format_score_table, score_file

__all__ = [
    "ANSWER_TYPES",
    "DEFAULT_LAMBDA",
    "DEFAULT_TAGS",
    "CombinedReward",
    "LocalizationConfig",
    "LocalizationReward",
    "RewardFn",
    "accuracy_reward",
    "combined_reward",
    "completion_text",
    "differentiate",
    "extract_boxed",
    "format_reward",
    "format_score",
    "format_score_table",
    "giou",
    "grade_answer",
    "grade_choice",
    "grade_expression",
    "grade_float",
    "grade_integer",
    "grade_text",
    "infer_answer_type",
    "iou",
    "iou_matrix",
    "localization_reward",
    "make_combined_reward",
    "make_format_reward",
    "make_localization_reward",
    "match_boxes",
    "parse_boxes",
    "parse_number",
    "rescale_boxes",
    "score_file",
    "score_localization",
]
