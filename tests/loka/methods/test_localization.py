"""Component-level LOKA: which parameters a component owns, the controls, any answer length."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import loka
from ablation import AblationMask, export_checkpoint
from ablation.params import parameter_masks
from attribution import attribute
from loka.data import Fact, KnowledgeSet
from loka.methods import unlearn
from loka.methods.localized.localization import MASK_DEFAULTS, MASK_RETAIN, control_mask, count_for_size, locate
from loka.models import hf_state_dict, load_model, plain_copy, same_kind_as
from loka.protocol import Protocol
from loka.scoring.metrics import score_facts
from loka.scoring.objectives import answer_log_probs, npo_loss, retain_kl, sequence_log_probs
from tests.checkpoints import ARCHITECTURES, birth_facts, build_tiny_checkpoint, parts
from tests.owned import only_owned_weights_moved


@pytest.fixture(scope="module")
def model(tiny_testbed):
    return loka.load_model(tiny_testbed.model_dir)


@pytest.fixture(scope="module")
def protocol(tiny_testbed):
    return Protocol.from_testbed(tiny_testbed)


@pytest.fixture(scope="module")
def located(model, protocol):
    return locate(model, protocol.forget, protocol.retain_train, size=0.05)


# ---------------------------------------------------------------- owned slices vs TransformerLens views


def _perturbed_views(model, mask: AblationMask) -> dict[str, torch.Tensor]:
    """TL's weight views of a copy whose owned parameters (for ``mask``) were all moved by 1,
    minus the original's: non-zero exactly where the components' owned weights live."""
    copy = plain_copy(model)
    owned = parameter_masks(copy, mask.neurons, mask.heads)
    state = dict(copy.named_parameters())
    with torch.no_grad():
        for name, where in owned.items():
            state[name].add_(where.to(state[name].dtype))
    edited = same_kind_as(copy, model)
    names = ("W_in", "b_in", "W_out", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
    if model.cfg.gated_mlp if hasattr(model.cfg, "gated_mlp") else False:
        names += ("W_gate",)
    return {
        n: (getattr(edited, n) - getattr(model, n)).detach()
        for n in names
        if getattr(model, n, None) is not None and getattr(edited, n, None) is not None
    }


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_neuron_and_a_head_own_exactly_their_tl_slices(arch: str, tmp_path: Path) -> None:
    """A neuron owns W_in[:, i] (and W_gate, b_in) and W_out[i]; a head owns W_Q/W_K/W_V[h] (and
    their biases) and W_O[h]: moving the owned HF parameters changes exactly those TL slices."""
    model = load_model(build_tiny_checkpoint(arch, tmp_path / arch))
    layer, neuron, head = 1, 5, 1
    n_heads, d_mlp = model.cfg.n_heads, model.cfg.d_mlp
    neurons = torch.zeros(model.cfg.n_layers, d_mlp, dtype=torch.bool)
    neurons[layer, neuron] = True
    diff = _perturbed_views(model, AblationMask(neurons, None))
    for name in ("W_in", "W_gate"):
        if name in diff:
            where = diff[name] != 0  # [layer, d_model, d_mlp]
            assert where[layer, :, neuron].all() and where.sum() == where.shape[1], name
    where = diff["W_out"] != 0  # [layer, d_mlp, d_model]
    assert where[layer, neuron].all() and where.sum() == where.shape[2]
    if "b_in" in diff and diff["b_in"].abs().sum() > 0:
        assert (diff["b_in"] != 0).nonzero().tolist() == [[layer, neuron]]
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        assert not diff[name].any(), f"a neuron must not own {name}"

    for whole_layer in (False, True):
        heads = torch.zeros(model.cfg.n_layers, n_heads, dtype=torch.bool)
        heads[layer, head] = True
        if whole_layer:
            heads[layer] = True
        diff = _perturbed_views(model, AblationMask(None, heads))
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            changed = (diff[name] != 0).flatten(2).any(-1)  # [layer, head] (key/value heads for W_K, W_V)
            expected = heads
            if changed.shape[1] != n_heads:  # grouped-query attention: a key/value head is owned only
                expected = heads.view(heads.shape[0], changed.shape[1], -1).all(-1)  # when its whole group is
            assert torch.equal(changed, expected), (name, whole_layer)
        for name in ("W_in", "W_out"):
            assert not diff[name].any(), f"a head must not own {name}"


# ---------------------------------------------------------------- only located parameters change


def _sets(*, subject: bool = True) -> tuple[KnowledgeSet, KnowledgeSet, KnowledgeSet]:
    """Forget, retain and validation facts with two-token answers (``subject=False``: question-
    answer records with no subject and no id, as a user's JSONL would give them)."""
    if subject:
        facts = birth_facts(10)
    else:
        records = [{"prompt": f"Where was person {i} born? It was in", "target": f"city {i}"} for i in range(10)]
        facts = KnowledgeSet.from_records(records, name="facts")
    return parts(facts, forget=3, retain=4, validation=3)  # type: ignore[return-value]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loka_changes_only_the_parameters_of_its_components(arch: str, tmp_path: Path) -> None:
    model = load_model(build_tiny_checkpoint(arch, tmp_path / arch))
    forget, retain, validation = _sets()
    result = unlearn(
        model, forget, retain, method="loka", validation=validation, size=0.1, components="all",
        target_forget_accuracy=0.0, max_steps=2, check_every=1, progress=False,
    )  # fmt: skip
    assert 0 < only_owned_weights_moved(model, result) <= result.config["chosen"]["parameters"]
    assert result.config["objective"] == "npo"  # no reference: the objective needs none


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_deletion_switches_off_only_the_masks_components(arch: str, tmp_path: Path) -> None:
    """LOKA that deletes (``localize="mask"``, ``edit="ablate"``): nothing is trained, every weight the
    located components do not own is bit-identical, and each located neuron's output row is zero."""
    model = load_model(build_tiny_checkpoint(arch, tmp_path / arch))
    forget, retain, validation = _sets()
    result = unlearn(
        model, forget, retain, method="loka", validation=validation, size=0.1, components="all", edit="ablate",
        ablate_mode="zero", localize="mask", mask_steps=3, progress=False,
    )  # fmt: skip
    assert result.compute.steps == 0 and result.config["chosen"]["localize"] == "mask"
    only_owned_weights_moved(model, result)
    for kind, layer, index in result.mask.components:
        if kind == "neuron":
            assert not loka.models.neuron_output_weights(result.model, layer, index).of(result.model).any()


def test_the_mask_locator_is_attributions_learned_mask_on_a_seeded_retain_sample(model, protocol) -> None:
    """``localize="mask"`` ranks by :func:`attribution.attribute`'s learned "remove" mask, trained on
    the forget facts and ``MASK_RETAIN`` retain facts drawn with the seed; ``mask=`` needs it."""
    config = dataclasses.replace(MASK_DEFAULTS, steps=3)
    located = locate(model, protocol.forget, protocol.retain_train, size=0.05, localize="mask", mask=config, seed=1)
    rows = torch.randperm(len(protocol.retain_train), generator=torch.Generator().manual_seed(1))[:MASK_RETAIN]
    sample = KnowledgeSet(tuple(protocol.retain_train.facts[i] for i in sorted(rows.tolist())), name="sample")
    expected = attribute(model, protocol.forget, method="learned_mask", components=("neurons",), retain=sample,
                         mask_config=dataclasses.replace(config, seed=1), progress=False)  # fmt: skip
    assert torch.equal(located.scores.neurons, expected.neurons)
    assert located.check is None and len(located.mask) == count_for_size(0.05, expected.neurons.numel())
    with pytest.raises(ValueError, match="mask= configures localize='mask', got localize='all'"):
        locate(model, protocol.forget, protocol.retain_train, size=0.05, mask=config)


def test_loka_runs_on_subject_less_id_less_question_answer_pairs(model) -> None:
    """No subject, no id, multi-token answers: LOKA localizes with prompt noise, trains on NPO."""
    forget, retain, validation = _sets(subject=False)
    assert all(f.subject is None and f.id.startswith("fact-") for f in forget)
    result = unlearn(model, forget, retain, method="loka", validation=validation, max_steps=2, check_every=1,
                     progress=False)  # fmt: skip
    assert result.mask is not None and len(result.mask) > 0 and result.compute.steps >= 1


# ---------------------------------------------------------------- controls


def test_controls_keep_the_count_per_layer(model, protocol, located) -> None:
    mask = located.mask
    per_layer = mask.neurons.sum(-1)
    random = control_mask(model, located, "random", seed=1).mask
    complement = control_mask(model, located, "complement", seed=1).mask
    least = control_mask(model, located, "least").mask
    for control in (random, complement, least):
        assert torch.equal(control.neurons.sum(-1), per_layer)
    assert not (complement.neurons & mask.neurons).any()
    importance = located.forget_scores.importance("neurons").abs()
    for layer in range(len(per_layer)):
        if per_layer[layer]:
            assert importance[layer][least.neurons[layer]].max() <= importance[layer][~least.neurons[layer]].min()
    layers = control_mask(model, located, "layers")
    assert layers.mask.neurons.any(-1).sum() >= 1 and torch.equal(
        layers.mask.neurons.all(-1), layers.mask.neurons.any(-1)
    )  # whole layers
    full = control_mask(model, located, "full")
    assert full.mask.neurons.all() and full.mask.heads.all()
    assert located.parameters < layers.parameters < full.parameters < full.total_parameters
    assert control_mask(model, located, "random", seed=1).parameters == located.parameters


def test_a_control_reads_the_ranking_its_loka_run_computed(model, protocol, monkeypatch) -> None:
    """LOKA's location controls run ``locate`` with the same inputs as LOKA: the second call reads
    the attribution the first computed (equal scores, no new attribution); another seed, another
    set or changed weights compute again."""
    from loka.methods.localized import localization

    localization._SCORED.clear()
    calls = []
    real = localization.attribution.attribute
    counted = lambda *a, **k: calls.append(k["seed"]) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(localization.attribution, "attribute", counted)
    forget, retain = protocol.forget, protocol.retain_train
    first = locate(model, forget, retain, size=0.05, check=0, seed=3)
    assert calls == [3, 3]  # forget, retain
    again = locate(model, forget, retain, size=0.05, check=0, seed=3)
    assert calls == [3, 3] and torch.equal(again.scores.neurons, first.scores.neurons)
    assert again.mask == first.mask
    locate(model, forget, retain, size=0.05, check=0, seed=4)
    assert calls == [3, 3, 4, 4]
    locate(model, KnowledgeSet(forget.facts[:-1]), retain, size=0.05, check=0, seed=3)
    assert calls == [3, 3, 4, 4, 3]  # the retain scores are reused, the forget set is new
    copy = plain_copy(model)
    with torch.no_grad():
        next(copy.parameters()).add_(1e-3)
    locate(same_kind_as(copy, model), forget, retain, size=0.05, check=0, seed=3)
    assert calls == [3, 3, 4, 4, 3, 3, 3]


def test_size_is_a_fraction_or_a_count(model, protocol) -> None:
    assert count_for_size(0.01, 2048) == 21 and count_for_size(7, 2048) == 7 and count_for_size(1.0, 10) == 10
    for bad in (0, 1.5, -0.1, True, "half", 5000):
        with pytest.raises(ValueError, match="size must be a fraction in"):
            count_for_size(bad, 2048)
    with pytest.raises(ValueError, match="location must be one of 'located', 'random', 'least'"):
        control_mask(model, None, "nowhere")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="components must be one of 'neurons', 'heads', 'all'"):
        locate(model, protocol.forget, protocol.retain_train, size=3, components="layers")  # type: ignore[arg-type]


# ---------------------------------------------------------------- the mask travels with the export


def test_the_mask_round_trips_through_loka_edit_json(model, protocol, tmp_path: Path) -> None:
    result = unlearn(
        model, protocol.forget, protocol.retain_train, method="loka", validation=protocol.retain_validation,
        reference=protocol.reference, max_steps=2, check_every=1, size=0.02, progress=False,
    )  # fmt: skip
    out = export_checkpoint(result.model, tmp_path / "edited", mask=result.mask, source=model, method="loka",
                            settings=result.config)  # fmt: skip
    record = json.loads((Path(out) / "loka_edit.json").read_text())
    loaded = AblationMask.load(Path(out) / record["mask"]["file"])
    assert loaded == result.mask
    assert record["settings"]["chosen"]["parameters"] == result.config["chosen"]["parameters"]


# ---------------------------------------------------------------- every answer token counts


def test_answer_accuracy_counts_every_answer_token(model) -> None:
    """A fact whose first answer token is still predicted but whose second is not is half known,
    and the stopping rule reads that (first-token accuracy would call it known)."""
    fact = Fact(id="x", prompt="Adam Lo was born in", target="New York", subject="Adam Lo")
    scores = score_facts(model, KnowledgeSet((fact,), name="one"))
    n = int(scores.n_target_tokens[0])
    assert n >= 2
    assert scores.answer_accuracy == pytest.approx(float(scores.n_correct_tokens[0]) / n)


def test_forget_losses_reach_every_answer_token(model) -> None:
    """The NPO forget term and the retain KL have gradient at every position that predicts an
    answer token, not only the first: a shared first token cannot hide the rest of the answer."""
    facts = KnowledgeSet(
        (
            Fact(id="a", prompt="Adam Lo lives in", target="New York", subject="Adam Lo"),
            Fact(id="b", prompt="Bea Lo lives in", target="New Delhi", subject="Bea Lo"),
        ),
        name="two",
    )
    batch = facts.encode(model)
    hf = loka.models.hf_model(model)
    logits = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.detach().requires_grad_(True)
    log_probs = batch.target_logits(logits).float().log_softmax(-1)
    loss = npo_loss(sequence_log_probs(log_probs, batch), torch.zeros(2))
    (grad,) = torch.autograd.grad(loss, logits)
    for row in range(2):
        for j in range(int(batch.target_mask[row].sum())):
            assert grad[row, batch.prediction_positions[row, j]].abs().sum() > 0, (row, j)
    with torch.no_grad():
        original = answer_log_probs(hf, batch)
    assert retain_kl(original, original, batch.target_mask).item() == pytest.approx(0.0, abs=1e-6)


def test_npo_matches_its_formula() -> None:
    """NPO (Zhang et al. 2024): -(2/beta) * mean log sigmoid(-beta * (log p - log p_ref))."""
    log_p, log_ref = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])
    beta = 0.1
    expected = -(2 / beta) * torch.log(torch.sigmoid(-beta * (log_p - log_ref))).mean()
    assert npo_loss(log_p, log_ref, beta=beta).item() == pytest.approx(expected.item(), rel=1e-6)
    # at log p = log p_ref the loss is (2/beta) log 2
    assert npo_loss(log_ref, log_ref, beta=beta).item() == pytest.approx(2 / beta * torch.log(torch.tensor(2.0)).item())


# ---------------------------------------------------------------- the other edit and localization modes


def test_ablate_zero_changes_only_the_owned_weights_and_exact_localization_picks_the_count(model, protocol) -> None:
    result = unlearn(
        model, protocol.forget, protocol.retain_train, method="loka", validation=protocol.retain_validation,
        reference=protocol.reference, edit="ablate", ablate_mode="zero", size=4, localize="exact", progress=False,
    )  # fmt: skip
    assert len(result.mask) == 4 and result.compute.steps == 0
    only_owned_weights_moved(model, result)
    # zero ablation: a neuron's output row is zero afterwards
    for _, layer, index in result.mask.components:
        assert not loka.models.neuron_output_weights(result.model, layer, index).of(result.model).any()
    check = result.config["chosen"]["score_check"]
    assert set(check["spearman"]) == {"neurons"} and -1.0 <= check["spearman"]["neurons"] <= 1.0


def test_auto_size_searches_upward_and_stops_at_the_first_that_reaches_the_target(model, protocol) -> None:
    result = unlearn(
        model, protocol.forget, protocol.retain_train, method="loka", validation=protocol.retain_validation,
        reference=protocol.reference, size="auto", sizes=(0.005, 0.01, 0.05), max_steps=4, check_every=2,
        target_forget_accuracy=1.0, retain_floor=0.0, erase="answer", progress=False,
    )  # fmt: skip
    # every check reaches a target of 1.0, so the smallest size is the answer and no other is tried
    assert {entry["size"] for entry in result.log} == {0.005}
    pool = model.cfg.n_layers * model.cfg.d_mlp
    assert len(result.mask) == math.ceil(0.005 * pool) == result.config["chosen"]["size"]
    hard = unlearn(
        model, protocol.forget, protocol.retain_train, method="loka", validation=protocol.retain_validation,
        reference=protocol.reference, size="auto", sizes=(0.005, 0.01), max_steps=2, check_every=2,
        target_forget_accuracy=0.0, erase="answer", progress=False,
    )  # fmt: skip
    assert [entry["size"] for entry in hard.log] == [0.005, 0.01]  # upward, one budget each
    assert [entry["step"] for entry in hard.log] == [2, 4] and hard.compute.steps == 4


def test_auto_lr_tries_each_rate_per_size_on_the_same_components_and_counts_every_step(model, protocol) -> None:
    common = dict(validation=protocol.retain_validation, reference=protocol.reference, max_steps=2, check_every=2,
                  erase="answer", adversary_weight=0.0, progress=False)  # fmt: skip
    tuned = unlearn(model, protocol.forget, protocol.retain_train, method="loka", size="auto", sizes=(0.005, 0.01),
                    lr="auto", lrs=(1e-3, 3e-2), target_forget_accuracy=0.0, **common)  # fmt: skip
    assert [(e["size"], e["lr"]) for e in tuned.log] == [(0.005, 1e-3), (0.005, 3e-2), (0.01, 1e-3), (0.01, 3e-2)]
    assert [e["step"] for e in tuned.log] == [2, 4, 6, 8] and tuned.compute.steps == 8
    margins = {(e["size"], e["lr"]): e["retain_accuracy"] - e["forget_accuracy"] for e in tuned.log}
    best = max(margins, key=lambda k: margins[k])  # nothing reaches forget 0: the best margin on validation wins
    assert tuned.config["chosen"]["lr"] == best[1]
    # each rate alone gives the model the search picked (the same components, the same seed)
    alone = unlearn(model, protocol.forget, protocol.retain_train, method="loka", size=best[0], lr=best[1],
                    target_forget_accuracy=0.0, **common)  # fmt: skip
    for name, tensor in hf_state_dict(alone.model).items():
        assert torch.equal(tensor, hf_state_dict(tuned.model)[name]), name
