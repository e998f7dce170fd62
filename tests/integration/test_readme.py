"""The README's "Usage" block runs as written (with tiny sizes appended), so it stays true; and a
real ``ivr train`` process prints our output only, no third-party noise."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ivr.cli import main

ROOT = Path(__file__).resolve().parents[2]

#: Appended to each command of a job (argparse: a repeated flag's last value wins; overrides
#: apply in order): the same commands, minutes → seconds.
TINY = {
    "synth": ["--n", "40"],
    "build-tiny": [],
    "sft": ["sft.steps=2", "sft.batch_size=4", "sft.eval_limit=4", "rollout.max_new_tokens=8"],
    "train": [
        "train.steps=1",
        "train.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=8",
        "ivr.critique_max_new_tokens=8",
    ],
    "eval": ["--limit", "3", "--max-new-tokens", "8"],
    "score": [],
}
#: Third-party output that must not reach the terminal (IVR_DEBUG / -v bring it back).
NOISE = ("Loading weights", "Writing model shards", "kernels-community", "it/s]", "FutureWarning")


def usage_commands(readme: Path = ROOT / "README.md") -> list[str]:
    """The commands of the fenced bash block under "## Usage", comments stripped."""
    section = readme.read_text().split("\n## Usage\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md: no ```bash block under ## Usage"
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def needs_external_benchmarks(argv: list[str]) -> bool:
    """An ``ivr eval`` of the paper's benchmarks (mathvista, …): local copies under
    ``--data-root`` that a test machine does not have (and nothing is downloaded)."""
    if "--benchmarks" not in argv:
        return False
    specs = argv[argv.index("--benchmarks") + 1].split(",")
    return any(not spec.startswith("synth:") for spec in specs)


def test_the_readme_usage_block_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    commands = usage_commands()
    assert [shlex.split(c)[0] for c in commands] == ["ivr"] * len(commands), commands
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the recipes, as in a checkout
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ran, skipped = [], []
    for command in commands:
        argv = shlex.split(command)[1:]
        if needs_external_benchmarks(argv):
            skipped.append(command)  # see needs_external_benchmarks: not here, not downloaded
            continue
        extra = TINY[argv[0]] if argv[0] != "eval" or "--model" in argv else []
        assert main([*argv, *extra]) == 0, command
        ran.append(command)
    out, err = capsys.readouterr()
    assert len(skipped) == 1 and "mathvista" in skipped[0], skipped
    assert len(ran) == len(commands) - 1
    # what the block promises exists, and every job said where it wrote
    for path in ("runs/sft/final", "runs/grpo_tiny/final", "runs/ivr_tiny/final"):
        assert (tmp_path / path / "config.json").is_file(), path
        assert path in out, path
    assert "final eval (step 2)" in out and "accuracy %" in out  # ivr sft's table
    assert "nothing to train: runs/ivr_tiny is already at its last step" in out  # --resume
    assert (tmp_path / "eval/ivr/synth/predictions.jsonl").is_file()
    assert "eval/ivr/synth/predictions.jsonl: 3 rows" in out  # ivr score read eval's output
    assert not [n for n in NOISE if n in out + err], err


def test_a_train_process_prints_no_third_party_output(tmp_path, tiny_qwen25_dir) -> None:
    """A real ``ivr train`` process (bitsandbytes and transformers imported fresh, as a user's):
    our progress bar and summary table, nothing else; ``-v`` brings the libraries back."""
    assert main(["synth", "--out", str(tmp_path / "world"), "--n", "8", "--tasks", "count"]) == 0
    env = {k: v for k, v in os.environ.items() if k != "IVR_DEBUG"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", COLUMNS="100")
    argv = [
        sys.executable, "-m", "ivr.cli", "train",
        f"model.path={tiny_qwen25_dir}", f"data.train={tmp_path / 'world'}", "model.device=cpu",
        "train.steps=1", "train.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=4", "log.tensorboard=false",
    ]  # fmt: skip
    quiet = subprocess.run(
        [*argv, f"train.output_dir={tmp_path / 'a'}"], env=env, capture_output=True, text=True
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "", quiet.stderr
    assert "reward" in quiet.stdout and f"final model: {tmp_path / 'a' / 'final'}" in quiet.stdout
    assert not [n for n in NOISE if n in quiet.stdout]
    loud = subprocess.run(
        [*argv, f"train.output_dir={tmp_path / 'b'}", "-v"], env=env, capture_output=True, text=True
    )
    assert loud.returncode == 0, loud.stderr
    assert "Loading weights" in loud.stderr and "Writing model shards" in loud.stderr


@pytest.mark.parametrize("line", ["ivr eval --model m --benchmarks synth:d,mathvista --out o"])
def test_benchmark_lines_are_recognised(line) -> None:
    assert needs_external_benchmarks(shlex.split(line)[1:])
    assert not needs_external_benchmarks(["eval", "--model", "m", "--benchmarks", "synth:d"])
