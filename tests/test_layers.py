"""The layering of docs/architecture.md, enforced: imports only go downward (the import-linter
contract in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(config: Path) -> subprocess.CompletedProcess[str]:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run(
        [lint, "--config", str(config), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_layers_contract_is_kept():
    result = _lint(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_layers_contract_catches_an_upward_import(tmp_path: Path):
    """The contract is live: a layer-1 module importing a tool breaks it."""
    for package in ("loka", "attribution", "ablation"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    facts = tmp_path / "loka" / "data" / "facts.py"
    facts.write_text(facts.read_text() + "\nimport ablation\n")
    config = tmp_path / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text())
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    result = subprocess.run(
        [lint, "--config", str(config), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": ""},
    )
    assert result.returncode != 0
    assert "loka.data.facts -> ablation" in result.stdout


def test_no_module_imports_itself_back():
    """No import cycle between modules (a cycle hides a missing room): the strongly connected
    components of the import graph are single modules."""
    import grimp

    graph = grimp.build_graph("loka", "attribution", "ablation")
    cycles = [
        (module, graph.find_shortest_chain(importer=imported, imported=module))
        for module in sorted(graph.modules)
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.find_shortest_chain(importer=imported, imported=module) is not None
    ]
    assert cycles == []
