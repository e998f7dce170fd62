"""``reward.functions``: user rewards named by import path in the config, resolved and checked
when the config is loaded, and added to the score exactly as ``Trainer(extra_rewards=)`` adds them.

The rewards below are referenced as ``f"{__name__}:name"``: this module's own import path, however
pytest imported it.
"""

from __future__ import annotations

import pytest

from ivr.config import ConfigError, config_from_dict, dump_config, load_config
from ivr.rewards.scorer import Scorer
from ivr.types import Sample

NOT_CALLABLE = 3


def length_penalty(completions: list[str], **_: object) -> list[float]:
    """−1 per 100 characters (a typical user shaping term)."""
    return [-len(c) / 100 for c in completions]


def only_integers(
    completions: list[str], answer_type: list[str], **_: object
) -> list[float | None]:
    """A dataset column arrives by keyword; None = does not apply."""
    return [1.0 if t == "integer" else None for t in answer_type]


def _fn(name: str) -> str:
    return f"{__name__}:{name}"


def test_functions_load_resolve_and_add_to_the_score() -> None:
    functions = (
        f'[{{fn: "{_fn("length_penalty")}", weight: 0.1}}, {{fn: "{_fn("only_integers")}"}}]'
    )
    cfg = load_config(None, [f"reward.functions={functions}"])
    assert [(f.fn, f.weight) for f in cfg.reward.functions] == [
        (_fn("length_penalty"), 0.1),
        (_fn("only_integers"), 1.0),  # weight defaults to 1
    ]
    extra = cfg.reward.resolved_functions()
    assert extra == ((length_penalty, 0.1), (only_integers, 1.0))

    # the trainer's Scorer: reward.functions then extra_rewards, as Trainer builds it
    samples = [Sample(id="a", question="q", answer="3", answer_type="integer")] * 2
    completions = ["<desc>d</desc><think>t</think>\\boxed{3}", "\\boxed{4}"]
    base = Scorer(format_weight=cfg.reward.format_weight)(samples, completions)
    scored = Scorer(format_weight=cfg.reward.format_weight, extra=extra)(samples, completions)
    for b, s, c in zip(base, scored, completions):
        assert s.reward == b.reward + 0.1 * (-len(c) / 100) + 1.0 * 1.0
        assert s.components["length_penalty"] == -len(c) / 100
        assert s.components["only_integers"] == 1.0


def test_functions_round_trip_through_yaml_and_dicts(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(f"reward:\n  functions:\n    - fn: {_fn('length_penalty')}\n      weight: 2\n")
    cfg = load_config(path)
    assert cfg.reward.functions[0].weight == 2.0
    assert cfg.to_dict()["reward"]["functions"] == [{"fn": _fn("length_penalty"), "weight": 2.0}]
    assert config_from_dict(cfg.to_dict()) == cfg
    dump_config(cfg, tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml") == cfg
    assert load_config(None).reward.functions == ()


GOOD = {"fn": _fn("length_penalty"), "weight": 0.1}


@pytest.mark.parametrize(
    ("item", "key", "why"),
    [
        (
            {"fn": "no_such_pkg_ivr.rewards:f"},
            "fn",
            r"module 'no_such_pkg_ivr.rewards' cannot be imported \(ModuleNotFoundError",
        ),
        ({"fn": _fn("no_such_reward")}, "fn", r"has no attribute 'no_such_reward'"),
        ({"fn": _fn("NOT_CALLABLE")}, "fn", r"'NOT_CALLABLE' is a int, not callable"),
        ({"fn": "length_penalty"}, "fn", r"must name a callable as package.module:attribute"),
        (
            {"fn": _fn("length_penalty"), "weight": float("nan")},
            "weight",
            r"must be a finite number",
        ),
        (
            {"fn": _fn("length_penalty"), "weight": float("inf")},
            "weight",
            r"must be a finite number",
        ),
        ({"fn": _fn("length_penalty"), "weight": "heavy"}, "weight", r"should be of type float"),
        ({"fn": _fn("length_penalty"), "weight": True}, "weight", r"should be of type float"),
    ],
)
def test_each_bad_function_is_named_by_key_and_index(item: dict, key: str, why: str) -> None:
    data = {"reward": {"functions": [GOOD, item]}}
    with pytest.raises(ConfigError, match=rf"`reward\.functions\[1\]\.{key}` = .*{why}"):
        config_from_dict(data)


def test_malformed_function_lists_are_named() -> None:
    with pytest.raises(ConfigError, match=r"`reward\.functions` = .* should be a list"):
        config_from_dict({"reward": {"functions": "pkg:fn"}})
    with pytest.raises(ConfigError, match=r"`reward\.functions\[0\]` = .* should be a mapping"):
        config_from_dict({"reward": {"functions": ["pkg:fn"]}})
    with pytest.raises(ConfigError, match=r"unknown key `reward\.functions\[0\]\.func`"):
        config_from_dict({"reward": {"functions": [{"func": "pkg:fn"}]}})
