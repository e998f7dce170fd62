"""``ivr synth | sft | train | eval | demo | score | build-tiny``: one entry point per job.

Each subcommand parses its own flags and imports its module lazily, so ``ivr --help`` is instant
and a mistake in one job's flags never costs a torch import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _config_args(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--config", "-c", help="YAML recipe (configs/*.yaml)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="true",
        metavar="auto",
        help="continue from the last intact checkpoint (an error if there is none); "
        "--resume=auto: continue if there is one, else start fresh",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start fresh in an output dir that holds a run (its files are removed first)",
    )
    p.add_argument("overrides", nargs="*", help=f"section.key=value overrides, e.g. {example}")


def _load(args: argparse.Namespace):
    from .config import ConfigError, load_config

    overrides, resume = list(args.overrides), args.resume
    if resume is not None and resume not in ("true", "auto"):
        if "=" not in resume:
            raise ConfigError(f"--resume takes no value or =auto, got {resume!r}")
        overrides, resume = [resume, *overrides], "true"  # `--resume a.b=c`: an override
    overrides += [f"train.resume={resume}"] if resume else []
    overrides += ["train.overwrite=true"] if args.overwrite else []
    return load_config(args.config, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from .console import print_train_summary
    from .rl.trainer import train

    cfg = _load(args)
    metrics = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # metrics are already reduced over ranks: print once
        print_train_summary(metrics, cfg.train.output_dir)
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from .console import print_sft_summary
    from .sft import run_sft

    cfg = _load(args)
    print_sft_summary(run_sft(cfg), cfg.train.output_dir)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import run_synth

    run_synth(args)
    return 0


def cmd_build_tiny(args: argparse.Namespace) -> int:
    from .models.tiny import build_tiny_vlm

    corpus = None
    if args.corpus:
        from .data.sft_rows import load_sft_rows

        corpus = [
            m["content"] if isinstance(m["content"], str) else str(m["content"])
            for row in load_sft_rows(args.corpus)
            for m in row["messages"]
        ]
    out = build_tiny_vlm(
        args.out,
        arch=args.arch,
        hidden=args.hidden,
        layers=args.layers,
        vision_hidden=args.vision_hidden,
        vision_depth=args.vision_depth,
        seed=args.seed,
        corpus=corpus,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .rewards.score import format_score_table, score_file

    print(format_score_table(score_file(args.file)))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.cli import run_eval

    return run_eval(args) or 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args)
    return 0


#: Commands that never import transformers: their output needs no switch that would import it.
_NO_LIBRARIES = ("synth", "score")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ivr",
        description=__doc__.splitlines()[0],
        epilog="IVR_DEBUG=1: tracebacks instead of one-line errors, and third-party output (-v)",
    )
    # -v before or after the command; the subcommand's default must not undo `ivr -v train`
    verbose = dict(action="store_true", help="keep third-party logs, progress bars and warnings")
    parser.add_argument("--verbose", "-v", **verbose)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", "-v", **verbose, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kw):
        return sub.add_parser(name, parents=[common], **kw)

    p = add("train", help="GRPO / IVR-R1 / baselines from a YAML recipe")
    _config_args(p, "algo.beta=0.04 train.steps=200")
    p.set_defaults(fn=cmd_train)

    p = add("sft", help="SFT cold start on chat JSONL (assistant tokens only)")
    _config_args(p, "sft.steps=1700 sft.lr=1e-3")
    p.set_defaults(fn=cmd_sft)

    p = add("synth", help="render the synthetic visual-reasoning world")
    from .data.synth import add_synth_arguments

    add_synth_arguments(p)
    p.set_defaults(fn=cmd_synth)

    p = add("build-tiny", help="build a tiny random Qwen-VL offline (tests, demo)")
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument(
        "--vision-hidden", type=int, default=64, help="vision tower width (128 reads digits)"
    )
    p.add_argument(
        "--vision-depth", type=int, default=2, help="vision tower blocks (4 reads digits)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", help="chat JSONL whose text trains the tokenizer")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(fn=cmd_build_tiny)

    p = add(
        "score",
        help="grade a JSONL of predictions offline",
        description="Grade a JSONL of model outputs with the training rewards' graders.",
        epilog="Each line a JSON object: the model's output under 'completion' or 'response' "
        "(ivr eval's predictions.jsonl), a string or a chat message list, and either 'answer' "
        "(with optional 'answer_type', 'choices', 'precision', 'unit'), graded by the accuracy "
        "and format rewards, or 'boxes' [[x1, y1, x2, y2], ...] with 'image_size' [w, h], "
        "scored by the Vision-R1 localization reward. Other keys are ignored; a row with "
        "nothing to grade (a null answer) is skipped and listed. See src/ivr/rewards/score.py.",
    )
    p.add_argument("file", help="JSONL of predictions, e.g. eval/ivr/synth/predictions.jsonl")
    p.set_defaults(fn=cmd_score)

    p = add("eval", help="evaluate a model on benchmarks (resumable)")
    try:
        from .eval.cli import add_eval_arguments
    except ImportError:  # pragma: no cover - eval module missing in a broken install
        add_eval_arguments = None
    if add_eval_arguments is not None:
        add_eval_arguments(p)
    p.set_defaults(fn=cmd_eval)

    p = add("demo", help="the main job: synth → SFT → GRPO & IVR-R1 → eval → report")
    try:
        from .demo import add_demo_arguments
    except ImportError:  # pragma: no cover
        add_demo_arguments = None
    if add_demo_arguments is not None:
        add_demo_arguments(p)
    p.set_defaults(fn=cmd_demo)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``build_parser().parse_args``, except that ``a.b=c`` overrides may also come after a flag
    (``ivr train a.b=1 --overwrite c.d=2``): argparse alone takes only the first run of
    positionals and rejects the rest. They are appended in order, so a later one still wins."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x]
    if extra and (stray or not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from .config import ConfigError
    from .console import debug_enabled, third_party_quiet

    try:  # IVR_DEBUG=1 or -v: everything the libraries say
        with third_party_quiet(args.verbose, libraries=args.command not in _NO_LIBRARIES):
            return args.fn(args)
    except (ConfigError, OSError, ValueError) as e:
        if debug_enabled():
            raise
        # Input problems and file system errors get one clear line naming the key or the path,
        # not a traceback from deep inside a library (IVR_DEBUG=1 shows the traceback).
        print(f"ivr {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2


def _message(e: Exception) -> str:
    """``[Errno 20] Not a directory: 'a/b'`` → ``Not a directory: a/b``; others as they are."""
    if isinstance(e, OSError) and e.filename is not None:
        where = f"{e.filename} → {e.filename2}" if e.filename2 is not None else f"{e.filename}"
        return f"{e.strerror or type(e).__name__}: {where}"
    return str(e)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
