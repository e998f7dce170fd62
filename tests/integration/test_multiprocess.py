"""Two CPU processes (gloo) train together: data parallel, and in sync.

The test builds a tiny Qwen2.5-VL and a few images, then launches this very file twice with
``python -m torch.distributed.run --nproc_per_node 2 test_multiprocess.py --worker …`` (the
launcher that ``accelerate launch`` runs underneath; the trainer's ``PartialState`` then sets up
a gloo process group on CPU). Each rank trains 3 GRPO steps on its own prompts and writes a JSON
report: a hash of its weights before and after, and, for every step, the metrics it computed
locally and the metrics ``Trainer._reduce`` returned. The test then checks that

- both ranks start from the same weights, end with the same weights, and the weights moved;
- the ranks sampled different prompts (it really is data parallel);
- the reduced metrics are the same on both ranks and equal the mean of the local ones;
- a step in which one rank has nothing to train on (every group's reward NaN on rank 1 at
  step 2) neither deadlocks the collectives nor desynchronises the weights.

Wall time ~15–30 s on 2 cores (two interpreters importing torch + transformers dominate).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

STEPS = int(os.environ.get("IVR_MP_STEPS", "3"))
TIMEOUT_S = int(os.environ.get("IVR_MP_TIMEOUT", "180"))
NAN_RANK, NAN_STEP = 1, 2  # this rank's rewards are all NaN at this step
# IVR-R1 on: critique → rectify rounds, generated on each rank alone (under FSDP, on gathered
# weights). Short critiques keep the FSDP and data-parallel runs sampling the same tokens: Adam's
# first steps turn float-rounding differences into ~lr-sized ones on near-zero gradients, and
# hundreds of sampled tokens would then diverge by chance, not by a bug.
# The reward here is a synthetic length signal with no right answer, so the default acceptance
# (right AND formatted) would never accept: `ivr.accept=reward` (r ≥ τ) keeps rectified rows, and
# their off-policy update, in these runs.
IVR_OVERRIDES = [
    "ivr.enabled=true",
    "ivr.rounds=2",
    "ivr.tau=0.5",
    "ivr.critique_max_new_tokens=6",
    "ivr.accept=reward",
]


def _write_images(root: Path) -> list[dict]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, colour in enumerate(["red", "blue", "green", "white", "black", "yellow"]):
        path = root / f"{i}.png"
        Image.new("RGB", (56, 56), colour).save(path)
        rows.append({"id": str(i), "colour": colour, "path": str(path)})
    return rows


def _launch(tmp_path: Path, model_dir: Path, rows: list[dict], mode: str = "ddp") -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    # torchrun is what `accelerate launch` runs underneath on GPUs; on a CPU-only box
    # `accelerate launch --cpu` starts ONE process unless MPI is set up, so call it directly.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--nnodes",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        __file__,
        "--worker",
        str(model_dir),
        str(tmp_path),
        mode,
    ]
    # Own session: on a timeout (a collective mismatch hangs) the launcher AND its workers go.
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"2-process training did not finish in {TIMEOUT_S} s:\n{log[-6000:]}")
    assert proc.returncode == 0, f"launch failed ({proc.returncode}):\n{log[-6000:]}"
    missing = [r for r in range(2) if not (tmp_path / f"rank{r}.json").is_file()]
    assert not missing, f"no report from rank(s) {missing} (ran as one process?):\n{log[-3000:]}"
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_stay_in_sync(tmp_path, tiny_qwen25_dir) -> None:
    pytest.importorskip("accelerate")
    rows = _write_images(tmp_path / "images")
    r0, r1 = _launch(tmp_path, tiny_qwen25_dir, rows)

    assert r0["world"] == r1["world"] == 2 and {r0["rank"], r1["rank"]} == {0, 1}
    assert r0["hash_before"] == r1["hash_before"]
    assert r0["hash_after"] == r1["hash_after"], "ranks hold different weights after training"
    assert r0["hash_after"] != r0["hash_before"], "the weights did not move"
    for step in range(STEPS):  # every rank trains on its own prompts
        assert set(r0["sample_ids"][step]).isdisjoint(r1["sample_ids"][step])

    assert len(r0["reduced"]) == len(r1["reduced"]) == STEPS
    for step in range(STEPS):
        red0, red1 = r0["reduced"][step], r1["reduced"][step]
        loc0, loc1 = r0["local"][step], r1["local"][step]
        assert set(red0) == set(red1) == set(loc0) | set(loc1)
        for key, value in red0.items():
            assert value == red1[key] or (math.isnan(value) and math.isnan(red1[key])), key
            # the mean over the ranks that report the key with a finite value
            have = [m[key] for m in (loc0, loc1) if key in m and math.isfinite(m[key])]
            expected = sum(have) / len(have) if have else math.nan
            assert value == pytest.approx(expected, rel=1e-9, abs=1e-12, nan_ok=True), key
    # The NaN step: rank 1 dropped its groups and trained on nothing, yet took part in the
    # update (same weights afterwards, checked above); its drop is visible in the mean.
    nan_step = NAN_STEP - 1
    assert r1["local"][nan_step]["reward/nan_groups"] > 0
    assert r0["local"][nan_step]["reward/nan_groups"] == 0
    assert r0["reduced"][nan_step]["reward/nan_groups"] == pytest.approx(
        r1["local"][nan_step]["reward/nan_groups"] / 2
    )
    # A time measured per rank is averaged, not taken from rank 0.
    assert r0["reduced"][0]["time/step"] == pytest.approx(
        (r0["local"][0]["time/step"] + r1["local"][0]["time/step"]) / 2
    )


def test_dynamic_sampling_runs_the_same_rounds_on_every_rank(tmp_path, tiny_qwen25_dir) -> None:
    """DAPO dynamic sampling (rl/filters.py): at NAN_STEP rank 1's only group has a NaN reward
    (not informative), so it needs one more prompt; rank 0 is full, yet both run round 2
    (the round's size is the max deficit over ranks) and the collectives line up."""
    pytest.importorskip("accelerate")
    rows = _write_images(tmp_path / "images")
    r0, r1 = _launch(tmp_path, tiny_qwen25_dir, rows, mode="ddp+dyn")
    assert r0["hash_after"] == r1["hash_after"] != r0["hash_before"]
    step = NAN_STEP - 1
    assert r0["local"][step]["dynamic/rounds"] == r1["local"][step]["dynamic/rounds"] >= 2
    assert r0["local"][step]["dynamic/prompts_drawn"] == r1["local"][step]["dynamic/prompts_drawn"]


# ---------------------------------------------------------------------- the worker
def _weights_hash_of(state: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_fsdp_shards_and_matches_data_parallel(tmp_path, tiny_qwen25_dir) -> None:
    """``train.sharding=fsdp`` (FSDP2 over gloo): each rank holds half of every parameter, IVR-R1
    rectification (data-dependent generation on each rank), the KL reference, a rank with
    nothing to train on, and checkpoints all work — and the trained weights equal the
    data-parallel run's on the same data (same update; only float rounding differs)."""
    pytest.importorskip("accelerate")
    rows = _write_images(tmp_path / "images")
    ddp = _launch(tmp_path / "ddp", tiny_qwen25_dir, rows, mode="ddp+ivr+kl")
    fsdp = _launch(tmp_path / "fsdp", tiny_qwen25_dir, rows, mode="fsdp+ivr+kl")

    for r in fsdp:  # sharded: about half of every parameter on each rank
        assert r["local_numel"] < 0.55 * r["full_numel"], r
    for r in ddp:
        assert r["local_numel"] == r["full_numel"]
    # the full state is gathered onto rank 0 only (one copy of the model in host memory)
    assert fsdp[0]["hash_after"] != fsdp[0]["hash_before"] and fsdp[1]["full_state_keys"] == 0
    # Both runs rectified something (the loop ran under FSDP) and saved final/ on rank 0.
    assert sum(m["ivr/critiqued"] for m in fsdp[0]["reduced"]) > 0
    import torch
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "ddp" / "run" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp" / "run" / "final" / "model.safetensors"))
    start = load_file(str(tiny_qwen25_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    moved = sum((a[k].float() - start[k].float()).abs().sum().item() for k in a)
    diff = sum((a[k].float() - b[k].float()).abs().sum().item() for k in a)
    assert moved > 1.0, "the weights did not move"
    # Same update up to rounding (measured ~2e-4 of the movement; a wrong gradient scale, a
    # missed rank or a skipped micro-batch gives O(1)).
    assert diff < 0.01 * moved, (diff, moved)
    for step in range(STEPS):  # the same trajectory: same rewards, same losses
        for key in ("reward/mean", "loss/loss", "loss/kl", "loss/grad_norm"):
            x, y = ddp[0]["reduced"][step][key], fsdp[0]["reduced"][step][key]
            assert x == pytest.approx(y, rel=1e-3, abs=1e-5), (step, key)
    # resumed from the last checkpoint: same weights, same AdamW moments, on the shards
    assert fsdp[0]["resumed_step"] == STEPS and fsdp[0]["optimizer_restored"] is True
    assert fsdp[0]["resumed_hash"] == fsdp[0]["hash_after"]
    assert fsdp[0]["unsharded_optimizer_restored"] is True  # data-parallel checkpoint → shards
    # the sharded checkpoint is a complete HF model
    step_dirs = sorted((tmp_path / "fsdp" / "run" / "checkpoints").glob("step_*"))
    assert step_dirs and (step_dirs[-1] / "model.safetensors").is_file()
    state = torch.load(step_dirs[-1] / "training_state.pt", weights_only=False)
    assert state["optimizer"]["state"], "optimizer state missing from the sharded checkpoint"


def test_fsdp_with_lora_merges_and_resumes(tmp_path, tiny_qwen25_dir) -> None:
    """LoRA under FSDP: adapters sharded with the base, the KL reference is the adapter switched
    off on gathered weights, resume restores the shards, and ``final/`` is the merged model in
    the base model's own layout."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    rows = _write_images(tmp_path / "images")
    r0, _ = _launch(tmp_path / "run", tiny_qwen25_dir, rows, mode="fsdp+lora+kl+ivr")
    assert r0["local_numel"] < 0.55 * r0["full_numel"]
    assert r0["resumed_step"] == STEPS and r0["optimizer_restored"] is True
    assert r0["resumed_hash"] == r0["hash_after"]
    assert math.isfinite(r0["reduced"][-1]["loss/kl"]) and r0["reduced"][-1]["loss/kl"] > 0
    final = load_file(str(tmp_path / "run" / "run" / "final" / "model.safetensors"))
    start = load_file(str(tiny_qwen25_dir / "model.safetensors"))
    assert final.keys() == start.keys()  # merged: no lora_A/lora_B, no peft prefixes
    assert max((final[k] - start[k]).abs().max().item() for k in start) > 1e-3


def test_fsdp_with_text_only_prompts(tmp_path, tiny_qwen25_dir) -> None:
    """Half the samples text-only: a rank may leave the vision tower without gradients while
    the other has them (reduce-scatter must still match), and text-only prompts sample through
    HF generate, which must not sync ranks per token on gathered weights — both used to hang."""
    rows = _write_images(tmp_path / "images")
    r0, r1 = _launch(tmp_path / "run", tiny_qwen25_dir, rows, mode="fsdp+ivr+mixed")
    assert r0["local_numel"] < 0.55 * r0["full_numel"]
    assert r0["hash_after"] != r0["hash_before"]
    assert len(r0["reduced"]) == STEPS


def _worker(model_dir: str, out_dir: str, mode: str = "ddp") -> None:
    import torch

    from ivr.config import load_config
    from ivr.rl.trainer import Trainer
    from ivr.types import Sample

    torch.set_num_threads(1)
    if os.environ.get("IVR_MP_DUMP"):  # debugging a hang: every rank's stack after N seconds
        import faulthandler

        faulthandler.dump_traceback_later(int(os.environ["IVR_MP_DUMP"]), exit=True)
    out = Path(out_dir)
    rows = json.loads((out / "rows.json").read_text())
    samples = [
        Sample(
            id=r["id"],
            question="What colour is it?",
            answer=r["colour"],
            # "+mixed": every other sample text-only, so under FSDP one rank's micro-batch
            # may leave the vision tower without gradients while the other's has them.
            images=() if "+mixed" in mode and int(r["id"]) % 2 else (r["path"],),
            answer_type="text",
        )
        for r in rows
    ]
    cfg = load_config(
        None,
        [
            f"model.path={model_dir}",
            "model.device=cpu",
            f"train.output_dir={out / 'run'}",
            f"train.steps={STEPS}",
            "train.prompts_per_step=1",
            "train.save_every=0",
            "train.threads=1",
            "rollout.group_size=4",
            "rollout.max_new_tokens=6",
            "rollout.top_p=1.0",
            "algo.lr=0.05",
            "algo.micro_batch_size=2",
            "reward.format_weight=0.0",
            "log.progress=false",
            "log.tensorboard=false",
        ]
        + (
            ["train.sharding=fsdp", "train.save_every=2"]
            if mode.startswith("fsdp")
            else ["train.sharding=none"]
        )
        + (IVR_OVERRIDES if "+ivr" in mode else [])
        + (["algo.beta=0.04"] if "+kl" in mode else [])
        + (["algo.dynamic_sampling=true"] if "+dyn" in mode else [])
        + (["model.lora_rank=4", "model.lora_alpha=8"] if "+lora" in mode else []),
    )
    calls = {"n": 0}

    def first_token_bonus(completions, **_):
        """A learning signal that varies within a group (so the update is not a no-op), and
        NaN for every completion of rank NAN_RANK at step NAN_STEP."""
        calls["n"] += 1
        if trainer.rank == NAN_RANK and calls["n"] == NAN_STEP:
            return [math.nan] * len(completions)
        return [float(len(c) % 3) for c in completions]

    trainer = Trainer(cfg, samples=samples, extra_rewards=[(first_token_bonus, 1.0)])
    report: dict = {"rank": trainer.rank, "world": trainer.world, "local": [], "reduced": []}
    from ivr.rl import sharding

    report["hash_before"] = _weights_hash_of(sharding.full_state_dict(trainer.model))
    params = list(trainer.model.parameters())
    report["full_numel"] = sum(p.numel() for p in params)
    report["local_numel"] = sum(
        p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params
    )
    report["sample_ids"] = [
        [s.id for s in trainer.batch_samples(step)] for step in range(1, STEPS + 1)
    ]
    reduce = trainer._reduce

    def spy(metrics):
        report["local"].append(dict(metrics))
        reduced = reduce(metrics)
        report["reduced"].append(dict(reduced))
        return reduced

    trainer._reduce = spy
    trainer.train()
    state = sharding.full_state_dict(trainer.model)
    report["hash_after"] = _weights_hash_of(state)
    report["full_state_keys"] = len(state)
    if trainer.sharded:  # resume: weights and optimizer state come back onto the shards
        import dataclasses

        import torch

        resumed = Trainer(
            dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=True)),
            samples=samples,
        )
        report["resumed_step"] = resumed.start_step
        report["resumed_hash"] = _weights_hash_of(sharding.full_state_dict(resumed.model))
        optim = sharding.optimizer_state(resumed.model, resumed.optimizer)
        if trainer.rank == 0:
            last = sorted((out / "run" / "checkpoints").glob("step_*"))[-1]
            saved = torch.load(last / "training_state.pt", weights_only=False)["optimizer"]
            report["optimizer_restored"] = all(
                torch.equal(v, optim["state"][name][k])
                for name, st in saved["state"].items()
                for k, v in st.items()
            ) and len(saved["state"]) == len(optim["state"])
        unsharded_run = out.parent / "ddp" / "run"
        if unsharded_run.is_dir():  # a data-parallel checkpoint resumed onto FSDP shards
            other = Trainer(
                dataclasses.replace(
                    cfg,
                    train=dataclasses.replace(
                        cfg.train, resume=True, output_dir=str(unsharded_run)
                    ),
                ),
                samples=samples,
            )
            optim = sharding.optimizer_state(other.model, other.optimizer)
            if trainer.rank == 0:
                last = sorted((unsharded_run / "checkpoints").glob("step_*"))[-1]
                saved = torch.load(last / "training_state.pt", weights_only=False)["optimizer"]
                names = [n for n, p in other.model.named_parameters() if p.requires_grad]
                report["unsharded_optimizer_restored"] = all(
                    torch.equal(v, optim["state"][names[i]][k])
                    for i, st in saved["state"].items()
                    for k, v in st.items()
                )
    (out / f"rank{trainer.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], sys.argv[3], sys.argv[4])
