"""Checkpoints: pruning by step number, verification on load with a named fallback, run dirs
that are resumed, refused or cleared, and a changed learning rate applied on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ivr import checkpoint as ckpt
from ivr.config import ConfigError, load_config


class _Model(torch.nn.Module):
    """The smallest thing ``save_checkpoint`` can save: one linear layer, HF-style files."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def save_pretrained(self, path: Path, state_dict=None) -> None:
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  str(Path(path) / "model.safetensors"))  # fmt: skip
        (Path(path) / "config.json").write_text(json.dumps({"model_type": "toy"}))


def _optim(model: torch.nn.Module, lr: float = 0.1):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    return opt, ckpt.make_scheduler(opt, "cosine", warmup_steps=2, total=10)


def _save(root: Path, step: int, lr: float = 0.1, config: dict | None = None) -> Path:
    model = _Model()
    opt, sched = _optim(model, lr)
    return ckpt.save_checkpoint(root, step, model=model, processor=None, optimizer=opt,
                                scheduler=sched, state={"config": config or {}})  # fmt: skip


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_pruning_keeps_the_newest_steps_of_this_run(tmp_path) -> None:
    root = tmp_path / "checkpoints"
    # an older, longer run left step 25 and 30 behind; this run saves steps 1, 2, 3 (keep = 2)
    for step in (25, 30, 1, 2, 3):
        _save(root, step)
    names = sorted(p.name for p in root.glob("step_*"))
    # by name, step_000025/30 sort last and step_000003 (just saved) was deleted, leaving
    # `latest` dangling; by step number of this run: 2 and 3 stay, 25 and 30 are not ours
    assert names == ["step_000002", "step_000003"]
    assert (root / "latest").read_text() == "step_000003"
    assert ckpt.latest_checkpoint(root) == root / "step_000003"


@pytest.mark.parametrize(
    "damaged", ["model.safetensors", "training_state.pt", "trainer_state.json"]
)
def test_a_truncated_file_is_named_and_the_newest_intact_checkpoint_used(tmp_path, damaged) -> None:
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        _save(root, step)
    _truncate(root / "step_000002" / damaged)
    with pytest.raises(ckpt.CheckpointError, match=damaged):
        ckpt.verify_checkpoint(root / "step_000002")
    ckpt.verify_checkpoint(root / "step_000001")
    with pytest.warns(UserWarning, match=rf"step_000002/{damaged}.*step_000001") as rec:
        assert ckpt.latest_checkpoint(root) == root / "step_000001"
    assert len(rec) == 1
    _truncate(root / "step_000001" / damaged)  # nothing intact left: an error naming both files
    with pytest.raises(
        ckpt.CheckpointError, match=rf"step_000002/{damaged}.*step_000001/{damaged}"
    ):
        ckpt.latest_checkpoint(root)


def test_plan_run_resumes_refuses_or_clears(tmp_path) -> None:
    out = tmp_path / "run"
    assert ckpt.plan_run(out, False, False) == (None, False)  # nothing there: a fresh run
    with pytest.raises(ConfigError, match=r"train\.resume=true.*no checkpoint.*train\.resume=auto"):
        ckpt.plan_run(out, True, False)
    assert ckpt.plan_run(out, "auto", False) == (None, False)

    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds a previous run \(metrics\.jsonl\).*--overwrite"):
        ckpt.plan_run(out, False, False)
    assert ckpt.plan_run(out, False, True) == (None, True)
    assert ckpt.plan_run(out, "auto", False) == (None, True)  # auto, nothing to resume: fresh
    with pytest.warns(UserWarning, match="removed the previous run's metrics.jsonl"):
        assert ckpt.clear_run(out) == ["metrics.jsonl"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # only the run's own files go

    _save(out / "checkpoints", 4)
    for resume in (True, "auto"):
        assert ckpt.plan_run(out, resume, False) == (out / "checkpoints" / "step_000004", False)
    with pytest.raises(ConfigError, match=r"holds a previous run \(checkpoints\)"):
        ckpt.plan_run(out, False, False)


def test_a_changed_lr_applies_on_resume_and_is_named(tmp_path) -> None:
    old_cfg = load_config(None, ["algo.lr=0.1"]).to_dict()
    model = _Model()
    opt, sched = _optim(model, lr=0.1)
    for _ in range(3):  # warmup 2, then cosine over 10: schedule factor at step 3 = cos-decay
        opt.step()
        sched.step()
    factor = sched.lr_lambdas[0](3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * factor)
    path = ckpt.save_checkpoint(tmp_path, 3, model=model, processor=None, optimizer=opt,
                                scheduler=sched, state={"config": old_cfg})  # fmt: skip

    new_cfg = load_config(None, ["algo.lr=0.5", "algo.weight_decay=0.01"]).to_dict()
    opt2, sched2 = _optim(model, lr=0.5)
    with pytest.warns(UserWarning, match=r"algo\.lr 0\.1 → 0\.5.*apply from step 4"):
        ckpt.restore_training_state(path, opt2, sched2, config=new_cfg)
    # the config in force: lr 0.5 × the schedule's factor at step 3, weight decay 0.01
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5 * factor)
    assert opt2.param_groups[0]["weight_decay"] == 0.01
    assert sched2.get_last_lr() == [pytest.approx(0.5 * factor)]
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5 * sched2.lr_lambdas[0](4))


def test_training_state_holds_only_tensors_and_plain_data_and_restores_every_rng(tmp_path) -> None:
    import random

    import numpy as np

    np.random.seed(7)
    np.random.randn()  # a cached Gaussian: part of numpy's state too
    random.seed(7)
    torch.manual_seed(7)
    path = _save(tmp_path, 1)
    blob = path / "training_state.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(blob) == []
    expected = (np.random.randn(3), np.random.rand(2), random.random(), torch.rand(3))
    for _ in range(5):  # move every generator on
        np.random.rand(), random.random(), torch.rand(1)
    opt, sched = _optim(_Model())
    ckpt.restore_training_state(path, opt, sched)
    got = (np.random.randn(3), np.random.rand(2), random.random(), torch.rand(3))
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and torch.equal(got[3], expected[3])


class _Exploit:
    """Unpickling this runs code: it writes ``marker`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_a_training_state_that_would_run_code_is_refused_naming_the_file(tmp_path) -> None:
    # the planted object is real: an unrestricted torch.load runs it
    proof = tmp_path / "proof"
    torch.save({"x": _Exploit(proof)}, tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)
    assert proof.read_text() == "pwned"

    path = _save(tmp_path / "checkpoints", 1)
    blob = path / "training_state.pt"
    state = torch.load(blob, weights_only=True)
    marker = tmp_path / "marker"
    state["rng"]["python"] = _Exploit(marker)
    torch.save(state, blob)
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints") == path  # an intact archive
    opt, sched = _optim(_Model())
    before = [g["lr"] for g in opt.param_groups]
    for load in (
        lambda: ckpt.load_training_state(path),
        lambda: ckpt.restore_training_state(path, opt, sched),
    ):
        with pytest.raises(
            ckpt.CheckpointError,
            match=rf"{blob}: refused to load: .*\(builtins\.exec\).*could run code",
        ):
            load()
    assert not marker.exists()
    assert [g["lr"] for g in opt.param_groups] == before  # nothing restored from it
