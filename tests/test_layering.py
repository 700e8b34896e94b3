"""The one-way dependencies between the packages, read from the source (``ast``, no imports).

``benchmarks -> baselines, vlsafe -> carla_safe_envs``: the environments import none of the
model packages nor torch or an RL library (``pip install carla-safe`` alone must work), and
the two model packages never import each other -- both implement the agent seam
:mod:`carla_safe_envs.agents`, whose registry reaches them by import string only.  Every
import counts: at module level, inside functions and under ``TYPE_CHECKING``, and an
``importlib.import_module("...")`` call with a literal name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> top-level modules it may not import, and why (for the failure message)
RULES: dict[str, tuple[tuple[str, ...], str]] = {
    "carla_safe_envs": (
        ("vlsafe", "baselines", "benchmarks", "tests", "torch", "d3rlpy", "stable_baselines3"),
        "the environments and the agent seam sit below every model package and stay light "
        "enough to install alone (no torch, no RL library)",
    ),
    "vlsafe": (
        ("baselines", "benchmarks", "tests"),
        "VL-SAFE implements carla_safe_envs.agents and is usable without the baseline zoo",
    ),
    "baselines": (
        ("vlsafe", "benchmarks", "tests"),
        "the zoo reaches vlsafe's agents only through the registry's import strings",
    ),
}


def imports(tree: ast.AST, package: str) -> Iterator[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``tree`` (a module of
    ``package``; relative imports stay inside it)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, package if node.level else (node.module or "")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def violations(root: Path, rules: Mapping[str, tuple[tuple[str, ...], str]]) -> list[str]:
    """One line per forbidden import below ``root``: file, line, the import, the rule."""
    found = []
    for package, (forbidden, why) in rules.items():
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, module in imports(tree, package):
                top = module.split(".")[0]
                if top in forbidden:
                    found.append(
                        f"{path.relative_to(root)}:{line}: imports {module!r}, but {package} "
                        f"may not import {top} ({why})"
                    )
    return found


def test_packages_import_one_way() -> None:
    for package in RULES:
        assert (ROOT / package / "__init__.py").is_file(), f"{package} is not a package"
    found = violations(ROOT, RULES)
    assert not found, "imports against the layering (see the README's layout):\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "from baselines.agent import BaseAgent\n",
        "def f():\n    import baselines.sb3 as sb3\n",
        "import importlib\nimportlib.import_module('baselines.offline')\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from baselines import x\n",
    ],
)
def test_a_forbidden_import_names_file_line_and_module(tmp_path: Path, source: str) -> None:
    package = tmp_path / "vlsafe"
    package.mkdir()
    (package / "__init__.py").write_text("from . import fine\n")
    (package / "fine.py").write_text("import torch\nfrom carla_safe_envs import agents\n")
    (package / "bad.py").write_text(source)
    found = violations(tmp_path, {"vlsafe": RULES["vlsafe"]})
    line = source.count("\n", 0, source.index("baselines")) + 1
    assert len(found) == 1, found
    assert found[0].startswith(f"vlsafe/bad.py:{line}: imports 'baselines")
    assert "vlsafe may not import baselines" in found[0]


def test_vlsafe_agents_work_without_the_baseline_zoo() -> None:
    """With ``baselines`` unimportable, the seam still makes and saves a VL-SAFE agent."""
    pytest.importorskip("torch")
    code = (
        "import sys, tempfile\n"
        "sys.modules['baselines'] = None\n"  # any import of it now raises ImportError
        "from carla_safe_envs.agents import load_agent, make_agent\n"
        "agent = make_agent('vlsafe', 'CarlaLeftTurn-v0', preset='debug')\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    print(type(load_agent(agent.save(d))).__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "vlsafe.agents"
