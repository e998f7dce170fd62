"""What the CLI shows: third-party output off for a job's duration only (and on with -v or
IVR_DEBUG), worker processes quiet too, and the end-of-job summaries."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings

import pytest
from transformers.utils import logging as hf_logging

from ivr.cli import build_parser
from ivr.console import QUIET_ENV, print_sft_summary, print_train_summary, third_party_quiet

BNB = logging.getLogger("bitsandbytes.backends.cpu.ops")  # the "Failed to load CPU gemm_4bit…"


def _state() -> tuple:
    return (
        hf_logging.get_verbosity(),
        hf_logging.is_progress_bar_enabled(),
        BNB.getEffectiveLevel(),
        os.environ.get(QUIET_ENV),
        os.environ.get("TRANSFORMERS_VERBOSITY"),
    )


def _shown(module: str) -> bool:
    """Whether a FutureWarning attributed to ``module`` would be shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("old API", FutureWarning, "f.py", 1, module=module, registry={})
    return bool(caught)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("IVR_DEBUG", QUIET_ENV, "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)


def test_quiet_for_the_job_only(clean_env) -> None:
    before = _state()
    assert before[:2] == (logging.WARNING, True) and _shown("transformers.modeling_utils")
    with third_party_quiet():
        assert hf_logging.get_verbosity() == logging.ERROR
        assert not hf_logging.is_progress_bar_enabled()
        assert not BNB.isEnabledFor(logging.WARNING) and BNB.isEnabledFor(logging.ERROR)
        assert not _shown("transformers.modeling_utils") and not _shown("peft.tuners")
        assert _shown("ivr.rl.trainer")  # ours are never hidden
        # what a worker process started now inherits
        assert os.environ[QUIET_ENV] == "1" and os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    assert _state() == before and _shown("transformers.modeling_utils")


@pytest.mark.parametrize("how", ["verbose", "IVR_DEBUG"])
def test_verbose_or_debug_changes_nothing(clean_env, monkeypatch, how) -> None:
    before = _state()
    if how == "IVR_DEBUG":
        monkeypatch.setenv("IVR_DEBUG", "1")
    with third_party_quiet(verbose=how == "verbose"):
        assert _state() == before and _shown("transformers.modeling_utils")


def test_the_users_environment_wins(clean_env, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # they want the bars
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    verbosity = hf_logging.get_verbosity()
    with third_party_quiet():
        assert hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == verbosity  # not raised to errors only
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"
        assert not BNB.isEnabledFor(logging.WARNING)  # the rest is still quiet
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"


def test_a_worker_process_of_a_quiet_job_is_quiet(clean_env) -> None:
    code = "import ivr, logging; print(logging.getLogger('bitsandbytes').level)"
    for env, level in (({QUIET_ENV: "1"}, logging.ERROR), ({}, logging.NOTSET)):
        out = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
        )
        assert out.stdout.strip() == str(level), out.stderr


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["train"], False),
        (["-v", "train"], True),
        (["train", "-v", "algo.lr=0.1"], True),
        (["--verbose", "score", "f.jsonl"], True),
        (["score", "f.jsonl", "--verbose"], True),
    ],
)
def test_verbose_flag_before_or_after_the_command(argv, verbose) -> None:
    assert build_parser().parse_args(argv).verbose is verbose


def test_train_summary_table(tmp_path, capsys) -> None:
    rows = [{"step": 1, "reward/mean": 0.25, "time/step": 2.0}, {"step": 2, "reward/mean": 0.75}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "final").mkdir()
    print_train_summary({"reward/mean": 0.75, "time/step": 1.0, "other/x": 3.0}, tmp_path)
    out = capsys.readouterr().out
    assert f"ivr train: {tmp_path} (2 steps logged)" in out
    assert [line.split("│")[1:4] for line in out.splitlines() if "reward " in line] == [
        [" reward           ", "      0.75 ", "      0.5 "]
    ]
    assert "seconds per step" in out and "other/x" not in out
    assert f"final model: {tmp_path / 'final'}" in out
    print_train_summary({}, tmp_path)  # a resumed run that was already complete
    assert "nothing to train" in capsys.readouterr().out


def test_sft_summary_shows_the_final_eval_and_where_it_saved(tmp_path, capsys) -> None:
    result = {
        "step": 3.0,
        "sft/loss": 1.5,
        "sft/token_accuracy": 0.5,
        "eval/n": 4.0,
        "eval/accuracy": 0.25,
        "eval/accuracy/count": 0.5,
        "final_dir": str(tmp_path / "final"),
    }
    print_sft_summary(result, tmp_path)
    out = capsys.readouterr().out
    assert "final eval (step 3)" in out
    for label, value in [("held-out rows", "4"), ("accuracy %", "25.0"), ("(count)", "50.0")]:
        assert any(label in line and value in line for line in out.splitlines()), (label, out)
    assert "loss 1.5, token accuracy 0.5" in out
    assert f"saved the final model to {tmp_path / 'final'}" in out
