"""compare(): every method beside the oracle and a random control; report.html is self-contained."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
from plotly.offline import get_plotlyjs

from loka.comparison import Comparison, compare, compare_testbed
from loka.comparison.outcomes import CALIBRATED
from loka.comparison.running import _groups
from loka.evaluation import evaluate
from loka.methods import Budget
from loka.models import load_model
from loka.protocol import Protocol

pytestmark = pytest.mark.slow  # a comparison runs a method twice and evaluates six models
FAST = Budget(max_steps=10, check_every=5)


@pytest.fixture(scope="module")
def comparison(tiny_testbed) -> Comparison:
    return compare_testbed(tiny_testbed, methods=("task_vector",), budget=FAST, seeds=2, progress=False)


@pytest.fixture(scope="module")
def localized(tiny_testbed) -> Comparison:
    """LOKA with a variant, two localization controls and a two-point budget curve."""
    return compare_testbed(
        tiny_testbed, methods=("loka",), variants={"loka subject": {"erase": "subject"}},
        locations=("random", "layers"), curve=(0.01, 0.05), budget=FAST, seeds=2, relearn=False, probe=False,
        progress=False,
    )  # fmt: skip


def test_loka_sits_beside_its_variants_and_localization_controls(localized, tmp_path):
    assert localized.names == ["original", "oracle", "loka", "loka subject", "loka @random", "loka @layers"]
    assert [c["erase"] for c in localized["loka subject"].configs] == ["subject", "subject"]
    loka, random, layers = localized["loka"], localized["loka @random"], localized["loka @layers"]
    assert [c["location"] for c in random.configs] == ["random", "random"]
    assert loka.parameter_fraction == pytest.approx(random.parameter_fraction)  # same count per layer
    assert loka.parameter_fraction < layers.parameter_fraction < 1.0
    assert not loka.controls  # its controls are the location rows, not a random direction
    verdicts = localized.localization()
    assert set(verdicts) == {"loka @random", "loka @layers"}
    assert all(v.startswith("The located components ") and "Not shown (intervals overlap):" in v
               and "2 seeds each" in v for v in verdicts.values())  # fmt: skip
    table = localized.table()
    assert "%par" in table and "loka @random" in table
    out = localized.save(tmp_path / "report")
    page = (out / "report.html").read_text()
    assert "Does the location matter?" in page and "<h3>budget curve</h3>" in page
    data = json.loads((out / "comparison.json").read_text())
    assert set(data["localization"]) == {"loka @random", "loka @layers"} and len(data["curve"]["points"]) == 8


def test_budget_curve_has_a_point_per_size_location_and_seed(localized):
    curve = localized.curve
    assert curve.sizes == [0.01, 0.05] and curve.locations == ["located", "random"]
    assert len(curve.points) == 2 * 2 * 2
    for size in curve.sizes:
        located, random = (curve.parameter_fraction(size, x) for x in ("located", "random"))
        assert located == pytest.approx(random)
        interval = curve.interval(size, "located", "forget")
        assert 0.0 <= interval.low <= interval.mean <= interval.high <= 1.0 and interval.n_seeds == 2
    assert curve.parameter_fraction(0.01, "located") < curve.parameter_fraction(0.05, "located")
    assert "located" in curve.table() and curve.plot().data


def test_rows_are_the_original_the_oracle_and_each_method(tiny_testbed, comparison):
    assert comparison.names == ["original", "oracle", "task_vector"]
    oracle = comparison["oracle"].evaluation
    layer = comparison["original"].evaluation.probe.layer  # the probe reads every model where it reads the original
    direct = evaluate(
        tiny_testbed.oracle_dir, protocol=Protocol.from_testbed(tiny_testbed), probe_layer=layer, label="oracle"
    )
    assert oracle == direct  # the oracle row is the shared evaluation of the oracle
    assert comparison["task_vector"].evaluation.probe.layer == layer
    for name in ("original", "task_vector"):
        assert comparison[name].evaluation.oracle == oracle
        assert comparison[name].evaluation.privleak is not None
    assert comparison["oracle"].seconds == tiny_testbed.info["training"]["oracle"]["seconds"]
    assert len(comparison["task_vector"].runs) == 2 and len(comparison["task_vector"].computes) == 2
    assert [c["seed"] for c in comparison["task_vector"].configs] == [0, 1]
    assert comparison["task_vector"].config["chosen"]["scale"] > 0
    with pytest.raises(KeyError, match="no method 'loka'"):
        comparison["loka"]


def test_every_method_has_a_random_control_of_the_same_size(comparison):
    controls = comparison["task_vector"].controls  # one per seed: as many as the method has
    assert len(controls) == len(comparison["task_vector"].runs) == 2
    assert {c.label for c in controls} == {"task_vector control"}
    assert not comparison["original"].controls
    rows = [label for label, *_ in comparison.rows()]
    assert rows == ["original", "oracle", "task_vector", "  random control"]


def test_intervals_are_over_people_and_seeds(comparison):
    outcome = comparison["task_vector"]
    forget = outcome.interval("forget")
    runs = [r.forget_accuracy for r in outcome.runs]
    # five facts per person: the mean of per-person means is the mean over facts
    assert forget.mean == pytest.approx(np.mean(runs)) and forget.n_seeds == 2
    assert (
        forget.low <= forget.mean <= forget.high
        and forget.n_people == len(comparison["original"].runs[0].details["forget"][0]) // 5
    )
    auc = outcome.interval("MIA")
    assert auc.mean == pytest.approx(np.mean([r.membership_inference_auc for r in outcome.runs]))
    assert comparison["original"].interval("retain").n_seeds == 1
    # the held-out judges no method trains against: Min-K%++ (an AUC) and the in-context attack
    plus = outcome.interval("Min-K++")
    assert plus.mean == pytest.approx(np.mean([r.mia_aucs["min_k_plus_plus"] for r in outcome.runs]))
    in_context = outcome.interval("in-ctx")
    assert in_context.mean == pytest.approx(np.mean([r.in_context_forget_accuracy for r in outcome.runs]))
    assert in_context.n_people == forget.n_people
    compute = outcome.compute_summary()
    assert compute["steps"] == np.mean([c.steps for c in outcome.computes]) and compute["seconds"] > 0


def test_uncalibrated_checks_are_reported_as_uninformative(comparison):
    informative = comparison.informative()
    assert set(informative) == set(CALIBRATED)
    blind = dataclasses.replace(comparison["oracle"], runs=comparison["original"].runs)  # oracle = original
    same = dataclasses.replace(comparison, outcomes=(comparison["original"], blind, comparison["task_vector"]))
    assert not any(same.informative().values())
    assert "uninformative here" in same.table()
    assert all(numbers["probe"] is None for _, numbers, *_ in same.rows())


def test_relearning_curve_runs_from_before_to_after(comparison):
    relearning = comparison["original"].evaluation.relearning
    steps = [s for s, _ in relearning.curve]
    assert steps[0] == 0 and steps[-1] == relearning.steps and steps == sorted(steps)
    assert relearning.curve[0][1] == relearning.before and relearning.curve[-1][1] == relearning.after


def test_table_and_json(comparison):
    table = comparison.table()
    for label, numbers, *_ in comparison.rows():
        assert label in table
        assert format(numbers["forget"], ".2f").replace(", ", ",") in table
    assert "[" in table and "steps" in table
    data = json.loads(json.dumps(comparison.to_dict()))
    assert data["format"] == "loka-comparison" and "retain_eval" in data["protocol"]
    assert [o["name"] for o in data["outcomes"]] == comparison.names
    assert data["outcomes"][2]["controls"][0]["label"] == "task_vector control"
    assert data["outcomes"][2]["intervals"]["forget"]["mean"] == comparison["task_vector"].interval("forget").mean


def test_report_is_self_contained(comparison, tmp_path):
    out = comparison.save(tmp_path / "report")
    page = (out / "report.html").read_text()
    assert get_plotlyjs() in page  # plotly.js inlined ...
    ours = page.replace(get_plotlyjs(), "")
    assert not re.search(r"<script[^>]+src=", ours)  # ... and nothing is fetched
    assert not re.search(r"""(src|href)=["']https?://""", ours)
    assert "Plotly.newPlot" in page and page.count("<table>") == 1
    for name in ("metrics", "relearning", "heads", "neurons"):
        assert f"<h3>{name}</h3>" in page
    for label, *_ in comparison.rows():
        assert f"<td>{label.strip()}</td>" in page
    assert json.loads((out / "comparison.json").read_text())["title"] == comparison.title


def test_save_never_replaces_what_loka_did_not_write(comparison, tmp_path):
    out = comparison.save(tmp_path / "r")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        comparison.save(out)
    comparison.save(out, overwrite=True)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="loka did not write it"):
        comparison.save(other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me" and len(list(other.iterdir())) == 1


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"methods": ("frobnicate",)}, "unknown method 'frobnicate' for compare"),
        ({"methods": ("retrain",)}, "unknown method 'retrain' for compare"),
        ({"methods": ("task_vector", "task_vector")}, "methods repeat a name"),
        ({"methods": ("task_vector",), "options": {"loka": {}}}, "options given for 'loka'"),
        ({"methods": ("task_vector",), "seeds": 0}, "seeds must be a positive count"),
        ({"methods": ("task_vector",), "control_seeds": -1}, "control_seeds must be a non-negative integer"),
        ({"methods": ("loka",), "locations": ("nowhere",)}, "unknown location 'nowhere'; locations are a list of"),
        ({"methods": ("task_vector",), "locations": ("random",)}, "locations and curve are about LOKA's edit"),
        ({"methods": ("loka",), "curve": (2.0,)}, "sizes must be fractions in"),
        ({"methods": ("loka",), "variants": {"loka": {"size": 0.1}}}, "variant name 'loka' is taken"),
        ({"methods": ("loka",), "variants": {"x": {"method": "retrain"}}}, "variant 'x': unknown method 'retrain'"),
        ({"methods": ("loka",), "variants": {"x": {"erase": "all"}}}, "erase must be one of"),
    ],
)
def test_bad_inputs(tiny_testbed, kwargs, message):
    model = load_model(tiny_testbed.model_dir)
    sets = dict(forget=tiny_testbed.forget, retain=tiny_testbed.retain, holdout=tiny_testbed.holdout)
    with pytest.raises(ValueError, match=message):
        compare(model, **sets, **kwargs)


def test_a_location_row_runs_right_after_the_loka_run_it_controls():
    """Each seed's location control goes in its LOKA run's group (it reads that run's ranking in the
    same process); a variant with other options, and every other method, runs alone."""
    jobs = [("loka", "loka", {}, 0, False), ("loka", "loka", {}, 1, False), ("npo", "npo", {}, 0, True),
            ("big", "loka", {"size": 0.1}, 0, False),
            ("loka @random", "loka", {"location": "random", "location_seed": 0}, 0, False),
            ("loka @random", "loka", {"location": "random", "location_seed": 1}, 1, False),
            ("big @random", "loka", {"size": 0.1, "location": "random", "location_seed": 0}, 0, False),
            ("@random", "loka", {"size": 0.2, "location": "random", "location_seed": 0}, 0, False)]  # fmt: skip
    assert _groups(jobs) == [[0, 4], [1, 5], [2], [3, 6], [7]]


def test_worker_processes_give_the_same_numbers(tiny_testbed):
    """Two worker processes (one thread each) reproduce the one-process comparison exactly, a LOKA
    location row (run in its LOKA run's process) too."""
    kwargs = dict(methods=("gradient_ascent", "loka"), locations=("random",), budget=FAST, seeds=2, relearn=False,
                  probe=False, control=False, progress=False, attribute=False)  # fmt: skip
    one = compare_testbed(tiny_testbed, **kwargs)
    two = compare_testbed(tiny_testbed, workers=2, **kwargs)
    assert [(label, numbers) for label, numbers, *_ in one.rows()] == [
        (label, numbers) for label, numbers, *_ in two.rows()
    ]
    assert one["gradient_ascent"].configs == two["gradient_ascent"].configs
    assert one.to_dict()["outcomes"][2]["runs"] == two.to_dict()["outcomes"][2]["runs"]  # the oracle attached too
    with pytest.raises(ValueError, match="workers > 1 needs the model as a directory"):
        compare(load_model(tiny_testbed.model_dir), protocol=Protocol.from_testbed(tiny_testbed), workers=2)
