"""The command line: file-system errors are one line naming the path, flags map onto the config."""

from __future__ import annotations

import pytest

from ivr.cli import _load, main, parse_args


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_os_errors_are_one_line_naming_the_path(tmp_path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    # an output path under a file (NotADirectoryError), and a file as the output directory
    assert main(["synth", "--out", str(afile / "world"), "--n", "4"]) == 2
    assert f"ivr synth: error: Not a directory: {afile / 'world'}" in _one_line_error(capsys)
    assert main(["synth", "--out", str(afile), "--n", "4"]) == 2
    assert str(afile) in _one_line_error(capsys)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert main(["synth", "--out", str(full), "--n", "4"]) == 2  # FileExistsError: not empty
    assert f"{full} is not empty" in _one_line_error(capsys)


def test_build_tiny_refuses_a_non_empty_dir_without_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["build-tiny", "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert f"{out} is not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]  # untouched
    assert main(["build-tiny", "--out", str(out), "--overwrite"]) == 0
    assert (out / "config.json").is_file()


@pytest.mark.parametrize(
    ("argv", "resume", "overwrite", "lr"),
    [
        ([], False, False, 1e-6),
        (["--resume"], True, False, 1e-6),
        (["--resume=auto"], "auto", False, 1e-6),
        (["--resume", "auto"], "auto", False, 1e-6),
        (["--resume", "algo.lr=0.5"], True, False, 0.5),  # an override, not the flag's value
        (["algo.lr=0.5", "--resume"], True, False, 0.5),
        (["--overwrite"], False, True, 1e-6),
        # overrides on both sides of a flag: all applied, in order (the last one wins)
        (["algo.lr=0.5", "--overwrite", "algo.lr=0.25"], False, True, 0.25),
        (["--overwrite", "algo.lr=0.5"], False, True, 0.5),
    ],
)
def test_resume_and_overwrite_flags(argv, resume, overwrite, lr) -> None:
    for command in ("train", "sft"):
        cfg = _load(parse_args([command, *argv]))
        assert (cfg.train.resume, cfg.train.overwrite, cfg.algo.lr) == (resume, overwrite, lr)


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys) -> None:
    assert main(["train", f"train.output_dir={tmp_path / 'run'}", "--resume"]) == 2
    assert "train.resume=true (--resume): no checkpoint under" in _one_line_error(capsys)


def test_a_stray_argument_after_a_flag_is_still_an_error(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(["train", "algo.lr=0.5", "--overwrite", "stray"])
    assert e.value.code == 2
    assert "unrecognized arguments: stray" in capsys.readouterr().err
