"""The import rules of docs/architecture.md, checked on the source (every import, including the
lazy ones inside functions), so a layer violation fails CI instead of surprising a maintainer.

A rule here is a promise to readers: "rewards know no model", "eval does not import the
trainer", "SFT does not import RL". Each violation is reported as ``module -> imported``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "ivr"

#: Layer of each top-level part of the package (docs/architecture.md); lower may not import higher.
LAYERS: dict[str, int] = {
    "ivr": 0,  # the package __init__
    "ivr.types": 0,
    "ivr.config": 0,
    "ivr.presets": 0,
    "ivr.console": 0,
    "ivr.tracking": 0,
    "ivr.checkpoint": 0,
    "ivr.rewards": 1,
    "ivr.data": 2,
    "ivr.models": 3,
    "ivr.training": 3,  # the model set-up SFT and RL share
    "ivr.rollout": 4,
    "ivr.eval": 5,
    "ivr.rl": 5,
    "ivr.sft": 5,
    "ivr.cli": 6,
    "ivr.demo": 6,
}

#: Same-layer imports that are forbidden (siblings that must stay independent), and the one
#: allowed exception: eval may run the re-reasoning loop, which imports nothing else of rl.
FORBIDDEN_SIBLINGS = {
    ("ivr.rl", "ivr.eval"),
    ("ivr.rl", "ivr.sft"),
    ("ivr.sft", "ivr.rl"),
    ("ivr.eval", "ivr.sft"),
    ("ivr.eval", "ivr.rl"),
}
ALLOWED = {("ivr.eval", "ivr.rl.rectify")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``ivr.*`` module imported by ``path``, relative imports resolved."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ivr"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ivr":
                continue
            found.add(target)
            # ``from . import checkpoint`` / ``from ivr.rl import rectify`` name submodules
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if (SRC.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                    SRC.parent / Path(*sub.split(".")) / "__init__.py"
                ).is_file():
                    found.add(sub)
    return found


def _part(module: str) -> str:
    """The LAYERS key a module belongs to (its longest listed prefix)."""
    best = "ivr"
    for key in LAYERS:
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    return best


def _is_violation(module: str, imported: str) -> bool:
    src_part, dst_part = _part(module), _part(imported)
    if dst_part == src_part or (src_part, imported) in ALLOWED:
        return False
    return LAYERS[dst_part] > LAYERS[src_part] or (src_part, dst_part) in FORBIDDEN_SIBLINGS


def _violations() -> list[str]:
    return [
        f"{_module_name(path)} -> {imported}"
        for path in sorted(SRC.rglob("*.py"))
        for imported in sorted(_imports(path))
        if _is_violation(_module_name(path), imported)
    ]


def test_every_source_module_has_a_layer():
    unknown = [
        _module_name(p)
        for p in SRC.rglob("*.py")
        if _part(_module_name(p)) == "ivr" and _module_name(p) != "ivr"
    ]
    assert unknown == [], f"add these to LAYERS and docs/architecture.md: {unknown}"


def test_no_layer_imports_upward():
    assert _violations() == []


def test_rectify_loop_is_independent_of_the_trainer():
    """eval imports rl.rectify, so rectify itself must not pull in the rest of rl."""
    imported = _imports(SRC / "rl" / "rectify.py")
    assert sorted(m for m in imported if m.startswith("ivr.rl")) == []


@pytest.mark.parametrize(
    ("module", "imported", "bad"),
    [
        ("ivr.rewards.answer", "ivr.models.policy", True),  # rewards know no model
        ("ivr.eval.runner", "ivr.rl.trainer", True),  # eval does not import the trainer
        ("ivr.eval.rereason", "ivr.rl.rectify", False),  # … but may run the loop
        ("ivr.sft", "ivr.rl.losses", True),
        ("ivr.rl.trainer", "ivr.rewards.scorer", False),
    ],
)
def test_the_rule_itself(module, imported, bad):
    """The checker flags what it should (a checker that passes everything would be useless)."""
    assert _is_violation(module, imported) is bad
