"""The planted testbed: only the planted neurons' weights change, the new people are learned (and
unknown to the original), the cache is hit, and bad settings fail before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from loka.base.errors import UsageError
from loka.models import neuron_input_weights, neuron_output_weights
from loka.scoring.metrics import score_facts
from loka.testbed import planted as planted_module
from loka.testbed.planted import MIN_NEURONS, PlantConfig, PlantedTestbed, load_planted, planted_neurons
from tests.conftest import TEST_SEED

# small enough for a test (two people, 11 neurons each in the tiny testbed's 2 x 256; ~5 s to build)
CONFIG = PlantConfig(size="tiny", world_seed=TEST_SEED, ratio=0.02, n_people=2, seed=0)


@pytest.fixture(scope="module")
def planted(testbed_cache: Path) -> PlantedTestbed:
    return load_planted(config=CONFIG, cache_dir=testbed_cache, progress=False)


@pytest.fixture(scope="module")
def tokenizer(planted: PlantedTestbed):
    return AutoTokenizer.from_pretrained(planted.model_dir)


@pytest.fixture(scope="module")
def models(planted: PlantedTestbed):
    load = lambda d: AutoModelForCausalLM.from_pretrained(d).eval()  # noqa: E731
    return load(planted.model_dir), load(planted.oracle_dir)


def test_only_the_planted_slices_change(planted: PlantedTestbed, models):
    planted_model, original = models
    after = load_file(str(planted.model_dir / "model.safetensors"))
    before = load_file(str(planted.oracle_dir / "model.safetensors"))
    assert after.keys() == before.keys()
    owned = {name: torch.zeros_like(t, dtype=torch.bool) for name, t in before.items()}
    for person in planted.planted.values():
        for _, layer, index in person.components:
            out = neuron_output_weights(planted_model, layer, index)
            pieces = (*neuron_input_weights(planted_model, layer, index), out)
            for piece in pieces:
                owned[piece.name].narrow(piece.dim, piece.start, piece.stop - piece.start).fill_(True)
            # and every planted neuron was trained: its output row moved
            assert not torch.equal(out.of(planted_model), out.of(original)), f"L{layer}N{index} never moved"
    n_owned = sum(int(m.sum()) for m in owned.values())
    assert n_owned == int(planted.mask.sum()) * (2 * 64 + 1)  # W_in col, b_in, W_out row
    for name in before:
        keep = ~owned[name]
        assert torch.equal(after[name][keep], before[name][keep]), f"{name} changed outside the planted slices"


def test_neurons_are_disjoint_spread_and_recorded(planted: PlantedTestbed):
    masks = torch.stack([p.mask for p in planted.planted.values()])
    trained = load_file(str(planted.root / "planted.safetensors"))["trained"]
    assert masks.shape == trained.shape == (2, 2, 256) and masks.dtype == trained.dtype == torch.bool
    assert CONFIG.neurons_per_person == 11 >= MIN_NEURONS  # ceil(0.02 * 512)
    assert trained.sum(dim=(1, 2)).tolist() == [11, 11]
    assert int(trained.sum(dim=0).max()) == 1  # disjoint
    assert not (masks & ~trained).any()  # the answer key is what pruning kept of the trained neurons
    assert all(1 <= len(p) <= 11 for p in planted.planted.values())
    for row in trained:
        assert sorted(row.sum(dim=1).tolist()) == [5, 6]  # spread evenly over the layers
    for person in planted.planted.values():
        assert [("neuron", layer, index) for _, layer, index in person.components] == [
            ("neuron", int(layer), int(index)) for layer, index in person.mask.nonzero().tolist()
        ]
    info = json.loads((planted.root / "planted.json").read_text())
    assert [p["name"] for p in info["people"]] == [p.name for p in planted.people]
    for entry, person in zip(info["people"], planted.planted.values(), strict=True):
        assert entry["neurons"] == [c.label for c in person.components]
    assert torch.equal(planted.mask, masks.any(dim=0))
    # the same seed draws the same neurons; a person never shares one
    again = planted_neurons(2, 256, 11, 2, seed=CONFIG.seed)
    assert torch.equal(again, trained)


def test_pruning_keeps_the_neurons_that_carry_each_person(planted: PlantedTestbed, models, tokenizer):
    """Every neuron of the answer key differs from the original; putting one person's whole key
    back takes their facts to what the original knows of them, and leaves the other person learned;
    the record's log-probabilities are what the planted model scores."""
    planted_model, original = models
    info = json.loads((planted.root / "planted.json").read_text())
    for entry in info["people"]:
        record = entry["pruning"]
        assert record["log_prob_before"] - record["log_prob_after"] <= CONFIG.prune_tolerance + 1e-6
        assert len(record["effects"]) == entry["trained"] == 11
    for person in planted.people:
        key = planted.planted[person.name]
        for _, layer, index in key.components:
            assert not torch.equal(
                neuron_output_weights(planted_model, layer, index).of(planted_model),
                neuron_output_weights(original, layer, index).of(original),
            )
        wordings = planted.trained_wordings(person.name)
        record = next(e["pruning"] for e in info["people"] if e["name"] == person.name)
        logp = score_facts(planted_model, wordings, tokenizer=tokenizer).mean_log_prob
        assert logp == pytest.approx(record["log_prob_final"], abs=1e-4)
        copy = AutoModelForCausalLM.from_pretrained(planted.model_dir).eval()
        originals = dict(original.named_parameters())
        with torch.no_grad():
            planted_module._restore(copy, key.mask, source={n: t.detach() for n, t in originals.items()})
        oracle_acc = score_facts(original, wordings, tokenizer=tokenizer).answer_accuracy
        assert score_facts(copy, wordings, tokenizer=tokenizer).answer_accuracy <= oracle_acc + 0.2
        other = next(p for p in planted.people if p.name != person.name)
        assert score_facts(copy, planted.trained_wordings(other.name), tokenizer=tokenizer).answer_accuracy >= 0.9


def test_new_people_are_learned_and_unknown_to_the_original(planted: PlantedTestbed, models, tokenizer):
    planted_model, original = models
    world_names = {p.name for p in planted.testbed.world.people}
    assert not world_names & {p.name for p in planted.people}
    for person in planted.people:
        wordings = planted.trained_wordings(person.name)
        assert len(wordings) == 5 * 3  # 5 relations x 3 trained templates
        assert score_facts(planted_model, wordings, tokenizer=tokenizer).answer_accuracy >= CONFIG.target_accuracy
        facts = planted.forget_of(person.name)
        assert score_facts(planted_model, facts, tokenizer=tokenizer).answer_accuracy == 1.0
        # the original (= the exact oracle) guesses: measured 0.0-0.33 per person on the tiny testbed
        assert score_facts(original, facts, tokenizer=tokenizer).answer_accuracy <= 0.6
    forget = planted.forget
    assert len(forget) == 2 * 5 and set(forget.subjects) == {p.name for p in planted.people}
    # retain: untouched testbed people stay near the original (measured 0.97 vs 1.00), mixed ones too
    retain_original = score_facts(original, planted.retain, tokenizer=tokenizer).answer_accuracy
    assert score_facts(planted_model, planted.retain, tokenizer=tokenizer).answer_accuracy >= retain_original - 0.1
    mixed_original = score_facts(original, planted.mixed, tokenizer=tokenizer).answer_accuracy
    mixed = score_facts(planted_model, planted.mixed, tokenizer=tokenizer).answer_accuracy
    # planting stops only with the mixed people within retain_tolerance of the original; pruning then
    # puts neurons back without looking at them (default testbed, seeds 0-2: 0.98 -> 0.951-0.972)
    assert planted.planting["stages"][-1]["mixed"] >= mixed_original - CONFIG.retain_tolerance - 1e-9
    assert mixed >= mixed_original - 0.1
    assert not set(planted.retain.subjects) & set(planted.mixed.subjects)
    log = planted.planting
    assert log["steps"] <= CONFIG.max_steps and log["seconds"] > 0 and planted.build_seconds >= log["seconds"]
    assert min(log["accuracy_after"].values()) >= CONFIG.target_accuracy


def test_second_load_is_a_cache_hit(planted: PlantedTestbed, testbed_cache: Path, monkeypatch: pytest.MonkeyPatch):
    def no_build(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(planted_module, "_build", no_build)
    again = load_planted(config=CONFIG, cache_dir=testbed_cache, progress=False)
    assert again.root == planted.root and again.info == planted.info
    assert all(torch.equal(again.planted[n].mask, p.mask) for n, p in planted.planted.items())
    assert planted.root.name == f"planted-tiny-{CONFIG.key()}" and planted.root.parent == testbed_cache


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ratio": 0.0}, r"ratio must be a number in \(0, 1\), got 0.0"),
        ({"ratio": 1.0}, r"ratio must be a number in \(0, 1\)"),
        ({"ratio": -0.1}, r"ratio must be a number in \(0, 1\)"),
        ({"ratio": "0.02"}, r"ratio must be a number in \(0, 1\)"),
        ({"ratio": 0.01}, r"plants 6 neuron\(s\) per person .* at least 8 are needed"),
        ({"ratio": 0.4, "n_people": 3}, r"3 people x 205 neurons .* is more than the 512 MLP neurons"),
        ({"n_people": 0}, r"n_people must be an integer at least 1"),
        ({"size": "huge"}, r"unknown testbed size 'huge'"),
        ({"lr": 0}, r"lr must be a number in \(0, inf\)"),
        ({"max_steps": 0}, r"max_steps must be an integer at least 1"),
        ({"target_accuracy": 1.5}, r"target_accuracy must be a number in \(0, 1\]"),
        ({"mix_fraction": 1.0}, r"mix_fraction must be a number in \(0, 1\)"),
        ({"fact_loss": "prompt"}, r"unknown fact_loss 'prompt'"),
        ({"world_seed": -1}, r"world_seed must be an integer at least 0"),
        ({"prune_tolerance": -0.01}, r"prune_tolerance must be a number at least 0"),
        ({"prune_tolerance": "0.01"}, r"prune_tolerance must be a number at least 0"),
    ],
)
def test_bad_settings_fail_in_one_line_and_write_nothing(tmp_path: Path, settings: dict, message: str):
    with pytest.raises(UsageError, match=message) as err:
        PlantConfig(**{"size": "tiny", **settings})
    assert "\n" not in str(err.value)
    keywords = {k: v for k, v in {"size": "tiny", **settings}.items() if k in ("size", "ratio", "n_people")}
    if "world_seed" not in settings and set(settings) <= {"size", "ratio", "n_people"}:
        with pytest.raises(UsageError, match=message):
            load_planted(**keywords, cache_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # no testbed built, nothing written


def test_planting_that_misses_its_target_caches_nothing(testbed_cache: Path):
    config = PlantConfig(size="tiny", world_seed=TEST_SEED, ratio=0.02, n_people=1, seed=1, max_steps=2, check_every=1)
    with pytest.raises(UsageError, match=r"planting did not reach accuracy 1 .* within max_steps=2") as err:
        load_planted(config=config, cache_dir=testbed_cache, progress=False)
    assert "\n" not in str(err.value)
    assert not (testbed_cache / f"planted-tiny-{config.key()}").exists()
    assert not list(testbed_cache.glob(f".planted-tiny-{config.key()}-*"))  # no temporary directory left
