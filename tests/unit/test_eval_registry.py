"""The benchmark registry: one ``@register_benchmark`` is all it takes to add a benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ivr.eval.cli import add_eval_arguments
from ivr.eval.loaders import BENCHMARKS, EvalItem, load_benchmark, register_benchmark


def test_register_benchmark_is_the_one_place_a_benchmark_is_added(tmp_path: Path) -> None:
    """One decorator makes a name loadable (also by its directory spelling) and lists it in
    ``ivr eval --help``; ids stay unique; a name cannot be registered twice."""

    def toy(root: Path):
        item = EvalItem(id="q", benchmark="toy_bench", question="2+2?", answer="4")
        return [item, item], []

    register_benchmark("toy_bench", title="Toy", dirnames=("Toy-Bench",), layout="nothing")(toy)
    try:
        (tmp_path / "toy-bench").mkdir()
        for spec in ("toy_bench", "Toy-Bench"):
            b = load_benchmark(spec, tmp_path)
            assert (b.name, b.title, b.path) == ("toy_bench", "Toy", tmp_path / "toy-bench")
            assert [it.id for it in b.items] == ["q", "q#2"]
        parser = argparse.ArgumentParser()
        add_eval_arguments(parser)
        assert "toy_bench" in parser.format_help()
        with pytest.raises(ValueError, match="registered twice"):
            register_benchmark("toy_bench", title="T", dirnames=(), layout="")(toy)
    finally:
        BENCHMARKS.pop("toy_bench")


def test_registry_order_and_spellings() -> None:
    """Registration order is the paper's list (error messages name them in this order); the
    spellings the old alias table accepted still resolve."""
    assert list(BENCHMARKS) == [
        "mathvista",
        "mathverse",
        "mathvision",
        "mmstar",
        "mmmu_pro",
        "mmmu",
    ]
    with pytest.raises(ValueError, match="no --data-root"):
        load_benchmark("MATH-Vision")  # resolves to mathvision, which then needs a data root
    with pytest.raises(ValueError, match="no --data-root"):
        load_benchmark("mmmupro")
