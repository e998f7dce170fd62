"""Config: round trip, overrides, and errors that name the key and the file."""

from __future__ import annotations

import pytest

from ivr.config import Config, ConfigError, dump_config, load_config, parse_overrides


def test_defaults_are_the_papers_settings() -> None:
    cfg = load_config()
    # IVR-R1 appendix A.1: G = 8, temperature 1.0, top_p 0.99, λ = 0.1, τ = 0.5, k = 2, T = 3, γ = 0.1
    assert (cfg.rollout.group_size, cfg.rollout.temperature, cfg.rollout.top_p) == (8, 1.0, 0.99)
    assert cfg.reward.format_weight == 0.1
    assert (cfg.ivr.tau, cfg.ivr.k, cfg.ivr.rounds, cfg.ivr.gamma) == (0.5, 2, 3, 0.1)
    assert cfg.ivr.context == "image" and cfg.ivr.shaping
    # DESIGN.md §1: accept = right AND formatted; the description ablation uses the policy's OWN
    # <desc> (the dataset's would leak the answer); IVR-R1, not its resample control
    assert (cfg.ivr.accept, cfg.ivr.description_source, cfg.ivr.strategy) == (
        "correct_format",
        "own",
        "rectify",
    )


def test_yaml_and_overrides_round_trip(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("algo:\n  lr: 2.0e-5\n  beta: 0\nivr:\n  enabled: true\n")
    cfg = load_config(path, ["algo.beta=0.04", "ivr.k=4", "model.path=/m"])
    assert cfg.algo.lr == 2e-5 and cfg.algo.beta == 0.04 and isinstance(cfg.algo.beta, float)
    assert cfg.ivr.enabled and cfg.ivr.k == 4 and cfg.model.path == "/m"
    # YAML 1.1 reads `2e-5` (no dot) as a string; it is still a float to us.
    assert load_config(None, ["algo.lr=2e-5"]).algo.lr == 2e-5
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, out)
    assert load_config(out) == cfg


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.algo.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("algo:\n  bta: 1\n", r"run\.yaml: unknown key `algo\.bta`"),
        ("algoo:\n  beta: 1\n", r"run\.yaml: unknown key `algoo`"),
        ("algo:\n  beta: high\n", r"run\.yaml: `algo\.beta` = 'high' should be of type float"),
        ("ivr:\n  enabled: 1\n", r"run\.yaml: `ivr\.enabled` = 1 should be true or false"),
        ("rollout:\n  group_size: 2.5\n", r"`rollout\.group_size` = 2\.5 should be of type int"),
        ("ivr:\n  context: text\n", r"`ivr\.context` = 'text'; expected one of"),
        ("ivr:\n  accept: reward_ge_tau\n", r"`ivr\.accept` = 'reward_ge_tau'; expected one of"),
        ("ivr:\n  strategy: resampling\n", r"`ivr\.strategy` = 'resampling'; expected one of"),
        ("ivr:\n  description_source: gold\n", r"`ivr\.description_source` = 'gold'; expected"),
        ("rollout:\n  top_p: 0\n", r"`rollout\.top_p` = 0\.0 must be in \(0, 1\]"),
        ("algo: 3\n", r"`algo` should be a mapping"),
        ("- a\n- b\n", r"top level should be a mapping"),
        ("algo: [unclosed\n", r"run\.yaml: not valid YAML"),
    ],
)
def test_bad_yaml_names_key_and_file(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_bad_overrides() -> None:
    with pytest.raises(ConfigError, match="should look like section.key=value"):
        load_config(None, ["algo.beta"])
    with pytest.raises(ConfigError, match="unknown key `algo.bta`"):
        load_config(None, ["algo.bta=1"])
    # 3 prompts × 8 samples = 24 sequences; a minibatch of 5 cannot divide it
    with pytest.raises(ConfigError, match="minibatch_size` = 5 must divide .* = 24"):
        load_config(None, ["train.prompts_per_step=3", "algo.minibatch_size=5"])


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found: /nope.yaml"):
        load_config("/nope.yaml")


def test_parse_overrides_nested_yaml_scalars() -> None:
    assert parse_overrides(["a.b=1", "a.c=true", "d=null", "e.f=x=y"]) == {
        "a": {"b": 1, "c": True},
        "d": None,
        "e": {"f": "x=y"},
    }


@pytest.mark.parametrize("path", sorted(__import__("glob").glob("configs/*.yaml")))
def test_shipped_recipes_load(path: str) -> None:
    cfg = load_config(path)
    assert cfg.model.path and cfg.train.output_dir
    assert cfg.ivr.enabled == ("ivr_" in path)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("ivr.tau=5", "ivr.tau"),  # the task reward is in [0, 1]: τ = 5 fails every rollout
        ("ivr.tau=0", "ivr.tau"),  # r < 0 never holds: nothing would ever be critiqued
        ("rollout.group_size=1", "rollout.group_size"),  # one sample: every advantage is 0
        ("train.steps=-5", "train.steps"),
        ("sft.steps=-3", "sft.steps"),
        ("sft.lr=-0.1", "sft.lr"),
        ("algo.name=ppo", "algo.name"),
        ("algo.max_grad_norm=0", "algo.max_grad_norm"),
        ("train.resume=maybe", "train.resume"),
        ("train.max_skipped_steps=-1", "train.max_skipped_steps"),
    ],
)
def test_out_of_range_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"`{key}` = "):
        load_config(None, [override])


def test_algo_name_is_checked_against_the_known_names() -> None:
    from ivr.config import ALGO_NAMES
    from ivr.rl.losses import LOSS_PRESETS

    # the paper's methods and every preset of the loss module are valid labels
    assert {"grpo", "dapo", "dr_grpo", "ivr"} | set(LOSS_PRESETS) <= ALGO_NAMES
    for name in sorted(ALGO_NAMES):
        assert load_config(None, [f"algo.name={name}"]).algo.name == name


def test_resume_is_false_true_or_auto_and_overwrite_excludes_it() -> None:
    # `True`/`False` as ivr demo writes them (f"train.resume={flag}") still read as booleans
    assert load_config(None, ["train.resume=True"]).train.resume is True
    assert load_config(None, ["train.resume=False"]).train.resume is False
    assert load_config(None, ["train.resume=auto"]).train.resume == "auto"
    assert load_config(None, ["train.overwrite=true"]).train.overwrite
    for resume in ("true", "auto"):
        with pytest.raises(ConfigError, match="`train.overwrite` = True cannot be combined"):
            load_config(None, ["train.overwrite=true", f"train.resume={resume}"])


# ---------------------------------------------------------------- algo.name presets

#: AlgoConfig of the default config as the code before presets resolved it (captured from it).
OLD_DEFAULT_ALGO = {
    "name": "grpo",
    "lr": 1e-06,
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "lr_schedule": "constant",
    "max_grad_norm": 1.0,
    "beta": 0.0,
    "clip_low": 0.2,
    "clip_high": 0.2,
    "scale_advantages": True,
    "aggregation": "token",
    "ppo_epochs": 1,
    "minibatch_size": 0,
    "micro_batch_size": 8,
    # added later, off by default (DAPO's data-side switches, rl/filters.py): same behaviour
    "dynamic_sampling": False,
    "max_sampling_rounds": 3,
    "overlong": "none",
    "overlong_buffer": 0,
    # keys added later, at the values that keep the old behaviour (GRPO's surrogate, no mask)
    "loss": "grpo",
    "sapo_tau_pos": 1.0,
    "sapo_tau_neg": 1.05,
    "top_entropy_quantile": 1.0,
}
#: What each shipped recipe resolved to before presets (captured), as changes to the default.
OLD_SHIPPED_ALGO = {
    None: {},
    "grpo_qwen2_5_vl_7b.yaml": {"micro_batch_size": 4},
    "grpo_qwen3_vl_4b.yaml": {"micro_batch_size": 4},
    "grpo_tiny.yaml": {"lr": 2e-05, "micro_batch_size": 32},
    "ivr_qwen2_5_vl_7b.yaml": {"name": "ivr", "micro_batch_size": 4},
    "ivr_qwen3_vl_4b.yaml": {"name": "ivr", "micro_batch_size": 4},
    "ivr_tiny.yaml": {"name": "ivr", "lr": 2e-05, "micro_batch_size": 32},
    "sft_tiny.yaml": {},
}


def test_default_and_shipped_configs_resolve_to_the_same_algo_as_before_presets() -> None:
    import dataclasses
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "configs"
    assert set(OLD_SHIPPED_ALGO) - {None} == {p.name for p in configs.glob("*.yaml")}
    for name, changes in OLD_SHIPPED_ALGO.items():
        cfg = load_config(None if name is None else configs / name)
        assert dataclasses.asdict(cfg.algo) == {**OLD_DEFAULT_ALGO, **changes}, name
    for name in ("grpo", "ivr", "ivr_r1"):  # the names the demo and the recipes write
        algo = dataclasses.asdict(load_config(None, [f"algo.name={name}"]).algo)
        assert algo == {**OLD_DEFAULT_ALGO, "name": name}


def test_the_default_preset_is_the_dataclass_defaults() -> None:
    import dataclasses

    from ivr.config import ALGO_PRESETS, AlgoConfig

    defaults = dataclasses.asdict(AlgoConfig())
    assert AlgoConfig().name == "grpo"
    assert {k: defaults[k] for k in ALGO_PRESETS["grpo"]} == dict(ALGO_PRESETS["grpo"])
    for preset in ALGO_PRESETS.values():  # presets only hold algo keys
        assert set(preset) <= set(defaults) - {"name"}


def test_algo_name_dapo_sets_the_defaults_of_unset_keys_only(tmp_path) -> None:
    algo = load_config(None, ["algo.name=dapo"]).algo
    assert (algo.clip_low, algo.clip_high, algo.aggregation, algo.beta) == (0.2, 0.28, "token", 0.0)
    assert algo.scale_advantages and algo.lr == 1e-6  # keys no preset holds keep their defaults
    # an override wins, before or after the name
    assert load_config(None, ["algo.beta=0.01", "algo.name=dapo"]).algo.beta == 0.01
    assert load_config(None, ["algo.name=dapo", "algo.clip_high=0.3"]).algo.clip_high == 0.3
    # a key the YAML states wins too, even when it equals the old default
    path = tmp_path / "run.yaml"
    path.write_text("algo:\n  name: dapo\n  clip_high: 0.2\n")
    assert load_config(path).algo.clip_high == 0.2
    assert load_config(path, ["algo.name=grpo"]).algo.clip_high == 0.2
    # a YAML with another name, switched by an override: the override's preset applies
    path.write_text("algo:\n  name: grpo\n")
    assert load_config(path, ["algo.name=dapo"]).algo.clip_high == 0.28


def test_other_presets_and_their_loss_kwargs() -> None:
    from ivr.rl.losses import LOSS_PRESETS

    dr = load_config(None, ["algo.name=dr_grpo"]).algo
    assert (dr.aggregation, dr.scale_advantages, dr.beta) == ("dr_grpo", False, 0.0)
    ds = load_config(None, ["algo.name=deepseekmath"]).algo
    assert (ds.aggregation, ds.beta, ds.clip_high) == ("sequence", 0.04, 0.2)
    # the loss module's presets are the same table, as policy_loss keyword arguments
    assert dict(LOSS_PRESETS["dapo"]) == {
        "clip_low": 0.2,
        "clip_high": 0.28,
        "aggregation": "token",
        "kl_beta": 0.0,
    }
    assert LOSS_PRESETS["ivr_r1"]["shaping_gamma"] == 0.1


def test_gspo_cispo_sapo_are_one_name_each() -> None:
    from ivr.rl.losses import LOSS_PRESETS

    g = load_config(None, ["algo.name=gspo"]).algo
    assert (g.loss, g.clip_low, g.clip_high, g.aggregation, g.beta) == (
        "gspo",
        3e-4,
        4e-4,
        "sequence",
        0.0,
    )
    c = load_config(None, ["algo.name=cispo"]).algo
    assert (c.loss, c.clip_low, c.clip_high, c.aggregation) == ("cispo", 1.0, 4.0, "token")
    s = load_config(None, ["algo.name=sapo"]).algo
    assert (s.loss, s.sapo_tau_pos, s.sapo_tau_neg, s.aggregation) == (
        "sapo",
        1.0,
        1.05,
        "sequence",
    )
    # the loss module's presets carry the variant (grpo's stay as they were: no `loss` key)
    assert LOSS_PRESETS["gspo"]["loss"] == "gspo" and "loss" not in LOSS_PRESETS["dapo"]
    assert LOSS_PRESETS["sapo"]["sapo_tau_neg"] == 1.05
    # explicit keys still win over the preset
    assert load_config(None, ["algo.name=gspo", "algo.clip_high=1e-3"]).algo.clip_high == 1e-3


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["algo.loss=ppo"], "algo.loss"),
        (["algo.clip_low=1.0"], "algo.clip_low"),  # grpo: [0, 1)
        (["algo.loss=gspo", "algo.clip_low=1.0"], "algo.clip_low"),
        (["algo.name=sapo", "algo.sapo_tau_neg=0"], "algo.sapo_tau_neg"),
        (["algo.top_entropy_quantile=0"], "algo.top_entropy_quantile"),
        (["algo.top_entropy_quantile=1.5"], "algo.top_entropy_quantile"),
        (["rollout.is_correction=yes"], "rollout.is_correction"),
        (["rollout.is_level=group"], "rollout.is_level"),
        (["rollout.is_cap=0.5"], "rollout.is_cap"),
        (
            ["rollout.is_correction=tis", "rollout.recompute_logprobs=false"],
            "rollout.is_correction",
        ),
    ],
)
def test_new_switches_are_validated_naming_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"`{key}` = "):
        load_config(None, overrides)


def test_cispo_alone_takes_an_unbounded_clip_low() -> None:
    # CISPO's weight has no lower bound when clip_low >= 1 (losses.cispo_surrogate)
    assert load_config(None, ["algo.loss=cispo", "algo.clip_low=5.0"]).algo.clip_low == 5.0
    assert load_config(None, ["algo.top_entropy_quantile=0.2"]).algo.top_entropy_quantile == 0.2


def test_a_resolved_config_round_trips_without_the_preset_changing_it(tmp_path) -> None:
    from ivr.config import config_from_dict

    cfg = load_config(None, ["algo.name=dapo", "algo.clip_high=0.2"])
    assert config_from_dict(cfg.to_dict()) == cfg
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_removed_reward_localization_key_warns_and_is_ignored(tmp_path) -> None:
    # old runs' config.yaml files hold it: they must still load
    path = tmp_path / "old.yaml"
    path.write_text("reward:\n  localization: true\n  format_weight: 0.2\n")
    with pytest.warns(UserWarning, match=r"reward\.localization.*never read"):
        cfg = load_config(path)
    assert cfg.reward.format_weight == 0.2 and not hasattr(cfg.reward, "localization")
