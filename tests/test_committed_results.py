"""The committed reproduction (``results/cpu``): its tables are what ``python -m benchmarks
table results/cpu`` makes from its committed store, so no number in them is edited by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from benchmarks.table import readme_block, write_outputs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "results" / "cpu"
#: the committed outputs of ``table`` that are text (the PNG plots regenerate bit for bit
#: with the same matplotlib, whose version the project does not pin)
TEXT_OUTPUTS = (
    "table.md",
    "table.csv",
    "table.tex",
    "headline.md",
    "table-generalize.md",
    "table-generalize.csv",
)


@pytest.mark.skipif(not (ROOT / "manifest.json").is_file(), reason="no committed results/cpu")
def test_committed_cpu_tables_are_regenerated_from_the_committed_store(tmp_path: Path) -> None:
    store = tmp_path / "cpu"
    shutil.copytree(ROOT / "cells", store / "cells")
    shutil.copy(ROOT / "manifest.json", store / "manifest.json")
    if (ROOT / "failures").is_dir():
        shutil.copytree(ROOT / "failures", store / "failures")
    _, written = write_outputs(store)
    names = {path.name for path in written}
    committed = [name for name in TEXT_OUTPUTS if (ROOT / name).is_file()]
    assert "table.md" in committed, "results/cpu has a store but no table.md"
    for name in committed:
        assert name in names, f"table no longer writes {name}"
        assert (store / name).read_text() == (ROOT / name).read_text(), (
            f"results/cpu/{name} differs from what `python -m benchmarks table results/cpu` "
            "makes of the committed store: regenerate it with that command"
        )
    for plot in ("return_cost.png", "performance_profile.png"):
        assert (ROOT / plot).is_file() and (store / plot).stat().st_size > 0


@pytest.mark.skipif(not (ROOT / "headline.md").is_file(), reason="no committed results/cpu")
def test_the_readme_shows_the_committed_headline() -> None:
    block = readme_block((REPO / "README.md").read_text(), "results/cpu")
    assert block is not None, "README.md has no '<!-- headline: results/cpu -->' block"
    assert block == (ROOT / "headline.md").read_text(), (
        "README.md's headline differs from results/cpu/headline.md: run "
        "`python -m benchmarks table results/cpu --readme README.md`"
    )
