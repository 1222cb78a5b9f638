"""The notebooks run top to bottom on the tiny testbed, and are committed without outputs.

Each notebook is copied to a temporary directory and executed there with nbclient, so the
committed files stay output-free. The kernel gets ``LOKA_TESTBED_SIZE=tiny`` and a
``LOKA_CACHE_DIR`` whose ``testbed/`` is the session's testbed cache (``loka.testbed`` looks for
testbeds in ``$LOKA_CACHE_DIR/testbed``), so the tiny testbed built by the ``tiny_testbed``
fixture is reused rather than trained again. Math libraries get one thread each: this machine's
few cores are shared, and oversubscribed BLAS / OpenMP threads make the small models here many
times slower.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = (
    "01_locate_knowledge.ipynb",
    "02_ablation_masks.ipynb",
    "03_unlearn_and_export.ipynb",
    "04_where_did_we_put_it.ipynb",
)
PLOTLY_MIME = "application/vnd.plotly.v1+json"
CELL_TIMEOUT_S = 300
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@pytest.fixture(scope="module")
def kernel_env(tiny_testbed: Any, testbed_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("loka-cache")
    (root / "testbed").symlink_to(testbed_cache.resolve(), target_is_directory=True)
    env = dict(os.environ)
    env.update({"LOKA_TESTBED_SIZE": "tiny", "LOKA_CACHE_DIR": str(root), "TQDM_DISABLE": "1"})
    env.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    # The kernel must import the same loka as the tests (the working tree, not an installed copy).
    repo = str(NOTEBOOK_DIR.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    return env


def execute(name: str, env: dict[str, str], workdir: Path) -> Any:
    """Run a copy of the notebook in ``workdir``; raise on the first cell error; return the executed notebook."""
    copy = workdir / name
    shutil.copy(NOTEBOOK_DIR / name, copy)
    notebook = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
        allow_errors=False,
    )
    client.execute(env={**env, "TMPDIR": str(workdir)})  # the notebooks' temporary files go to workdir
    nbformat.write(notebook, copy)  # executed copy, for looking at after a failure
    return notebook


def text_of(notebook: Any) -> str:
    """Everything the code cells printed (streams and plain-text results)."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            elif "data" in output and "text/plain" in output["data"]:
                parts.append(output["data"]["text/plain"])
    return "\n".join(parts)


def plotly_figures(notebook: Any) -> list[dict[str, Any]]:
    figures = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME in data:
                figure = data[PLOTLY_MIME]
                figures.append(json.loads(figure) if isinstance(figure, str) else figure)
    return figures


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"no line matching {pattern!r} in the notebook's output:\n{text[-3000:]}"
    return float(match.group(1))


@pytest.mark.slow
def test_locate_knowledge_notebook(kernel_env: dict[str, str], tmp_path: Path) -> None:
    notebook = execute("01_locate_knowledge.ipynb", kernel_env, tmp_path)
    text = text_of(notebook)
    # causal tracing: noising the subject lowers the answer's log-probability
    clean = number(r"mean log p\(target\): clean (-?[\d.]+)", text)
    corrupted = number(r"corrupted (-?[\d.]+)", text)
    assert corrupted < clean - 0.5
    # the top head by zero-ablation is one the facts need: ablating it lowers log p(target)
    assert number(r"top head L\d+H\d+: mean effect ([-+][\d.]+)", text) < 0
    figures = plotly_figures(notebook)
    assert len(figures) >= 7  # scan x2, heads, per-fact box, neurons, top, estimate vs exact, pattern
    titles = " ".join(str(f.get("layout", {}).get("title", "")) for f in figures)
    assert "Attention pattern of L" in titles


@pytest.mark.slow
def test_ablation_masks_notebook(kernel_env: dict[str, str], tmp_path: Path) -> None:
    notebook = execute("02_ablation_masks.ipynb", kernel_env, tmp_path)
    text = text_of(notebook)
    assert "mask round trip equal: True" in text
    # the line chart: for every mask type, forget and retain lines over the same sizes
    figures = plotly_figures(notebook)
    chart = next(f for f in figures if "random neurons" in str(f["layout"].get("title", "")))
    names = {trace["name"] for trace in chart["data"]}
    assert {"contrast: forget", "contrast: retain", "random: forget", "random: retain"} <= names
    accuracy = {t["name"]: t["y"] for t in chart["data"] if t.get("xaxis") in (None, "x")}
    log_p = {t["name"]: t["y"] for t in chart["data"] if t.get("xaxis") == "x2"}
    # the largest attributed mask hurts the forget facts more than random masks of its size do:
    # log p(target) -0.57 vs -0.10 (seed 0), -0.47 vs -0.12 (seed 1); first-token accuracy moves
    # by a few of the 30 facts (0.83 vs 1.00, 0.90 vs 0.98), so it is only asserted not to be better
    assert log_p["contrast: forget"][-1] < log_p["random: forget"][-1]
    assert accuracy["contrast: forget"][-1] <= accuracy["random: forget"][-1]
    # the files: JSON beside safetensors for a mean mask
    assert re.search(r"forget_mask\.json\s+\d+ bytes", text)
    assert re.search(r"forget_mask\.safetensors\s+\d+ bytes", text)


@pytest.mark.slow
def test_unlearn_and_export_notebook(kernel_env: dict[str, str], tmp_path: Path) -> None:
    notebook = execute("03_unlearn_and_export.ipynb", kernel_env, tmp_path)
    text = text_of(notebook)
    for method in ("loka", "gradient_ascent", "task_vector"):
        assert f"=== {method} ===" in text
    assert "loka_edit.json" in text
    assert "forget answer changed: True" in text
    assert "retain answer kept: True" in text
    original = number(r"forget accuracy: original ([\d.]+)", text)
    exported = number(r"exported checkpoint ([\d.]+)", text)
    assert exported < original


def recall_row(text: str, locator: str) -> list[float]:
    """The mean Recall@r, @2r, @5r of ``locator`` in notebook 4's recall table."""
    match = re.search(rf"^{re.escape(locator)}\s+([\d.]+) \[[^]]*\]\s+([\d.]+) \[[^]]*\]\s+([\d.]+) \[", text, re.M)
    assert match, f"no recall row for {locator!r} in the notebook's output:\n{text[-3000:]}"
    return [float(v) for v in match.groups()]


@pytest.mark.slow
def test_where_did_we_put_it_notebook(kernel_env: dict[str, str], tmp_path: Path) -> None:
    notebook = execute("04_where_did_we_put_it.ipynb", kernel_env, tmp_path)
    text = text_of(notebook)
    assert "planted testbed 'tiny': 2 new people x 11 neurons" in text
    # the recall table: every locator has a row; the best one finds most of the planted neurons at
    # k = r (tiny, seed 0: learned_mask 0.73, activation_patching 0.68, grad_x_act 0.59), far above
    # random scores, which sit at chance (k / d_mlp: 0.02, 0.05, 0.12)
    locators = (
        "grad_x_act", "integrated_gradients", "activation_magnitude", "activation_patching", "learned_mask",
        "grad_x_act, peeled", "grad_x_act, denoising",
    )  # fmt: skip
    rows = {name: recall_row(text, name) for name in locators}
    chance = recall_row(text, "random (100 draws)")
    assert max(row[0] for row in rows.values()) >= 0.5
    assert rows["grad_x_act"][0] >= 0.4
    assert chance[2] < 0.2
    assert all(row[0] > 5 * chance[0] for row in rows.values())
    # deletion at k = r per person: the truth and the located neurons take the planted facts to the
    # oracle's level (0.00; tiny seed 0: 0.00-0.10) while random neurons of the same count leave
    # them (0.88); retain stays (0.96-1.00)
    oracle = number(r"\n  oracle\s+forget ([\d.]+)", text)
    truth = number(r"planted \(the truth\)\s+forget ([\d.]+)", text)
    random = number(r"\n  random\s+forget ([\d.]+)", text)
    located = number(r"\n  learned_mask\s+forget ([\d.]+)", text)
    assert oracle <= 0.1 and truth <= oracle + 0.1
    assert located <= 0.2 and random >= 0.7
    assert number(r"\n  random\s+forget [\d.]+\s+retain ([\d.]+)", text) >= 0.9
    assert "ablation profile: 10 forget facts" in text
    # plotly: the heatmap of planted vs located neurons and the ablation profile (with the oracle line)
    figures = plotly_figures(notebook)
    titles = [str(f.get("layout", {}).get("title", "")) for f in figures]
    assert any("the planted neurons and each locator's top r" in t for t in titles)
    profile = next(f for f, t in zip(figures, titles, strict=True) if "Zeroing the top k%" in t)
    names = {trace["name"] for trace in profile["data"]}
    assert {"planted (the truth)", "grad_x_act", "learned_mask", "random"} <= names


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_exists(name: str) -> None:
    assert (NOTEBOOK_DIR / name).is_file(), f"notebooks/{name} is missing"


def test_no_notebook_has_outputs_or_execution_counts() -> None:
    notebooks = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    dirty = []
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            if cell.get("outputs"):
                dirty.append(f"{path.name} cell {index}: has outputs")
            if cell.get("execution_count") is not None:
                dirty.append(f"{path.name} cell {index}: has execution_count {cell.execution_count}")
    assert not dirty, "clear the notebooks' outputs before committing:\n" + "\n".join(dirty)
