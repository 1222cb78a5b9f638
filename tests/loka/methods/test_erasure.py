"""Erasure: NPO as a method, LOKA's subject erasure, re-initialise-and-repair and the adversary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import loka
from loka.base.errors import UsageError
from loka.data import KnowledgeSet
from loka.data.knowledge import Prompts
from loka.methods import unlearn
from loka.methods.localized import finetune
from loka.methods.localized.erasure import SubjectTerm, name_facts, shrink_perturb
from loka.methods.terms import ForgetTerm
from loka.models import load_model
from loka.protocol import Protocol
from loka.scoring.metrics import text_nll
from tests.checkpoints import ARCHITECTURES, birth_facts, build_tiny_checkpoint, parts
from tests.owned import only_owned_weights_moved


@pytest.fixture(scope="module")
def model(tiny_testbed):
    return loka.load_model(tiny_testbed.model_dir)


@pytest.fixture(scope="module")
def protocol(tiny_testbed):
    return Protocol.from_testbed(tiny_testbed)


def _sets() -> tuple[KnowledgeSet, ...]:
    """Forget, retain, validation and reference facts about people with two-word names."""
    return parts(birth_facts(14, surnames=True, relation=True), forget=3, retain=4, validation=3, reference=4)


def test_name_facts_split_each_name_after_its_first_word() -> None:
    forget = _sets()[0]
    names = name_facts(forget)
    assert names is not None and [(f.prompt, f.target) for f in names] == [
        ("Adaa", "Loa"), ("Adab", "Lob"), ("Adac", "Loc")
    ]  # fmt: skip
    one_word = KnowledgeSet.from_records([{"prompt": "Plato was born in", "target": "Athens", "subject": "Plato"}])
    assert name_facts(one_word) is None


def test_text_nll_is_the_mean_next_token_loss_of_the_whole_text(model, protocol) -> None:
    """Equal to the HF model's own loss on each text (labels = the text), row by row."""
    facts = KnowledgeSet(protocol.forget.facts[:4], name="some")
    batch = facts.encode(model.tokenizer)
    hf = model.original_model
    ours = text_nll(hf, batch)
    for i in range(len(facts)):
        n = int(batch.attention_mask[i].sum())
        ids = batch.input_ids[i : i + 1, :n]
        assert ours[i].item() == pytest.approx(hf(input_ids=ids, labels=ids).loss.item(), abs=1e-5)


def test_shrink_perturb_moves_only_the_masked_entries() -> None:
    layer = torch.nn.Linear(8, 6)
    before = {k: v.detach().clone() for k, v in layer.named_parameters()}
    keep = {"weight": torch.zeros(6, 8, dtype=torch.bool)}
    keep["weight"][2] = True
    shrink_perturb(layer, keep, 1.0, seed=0)
    after = dict(layer.named_parameters())
    assert torch.equal(after["bias"], before["bias"])
    assert torch.equal(after["weight"][~keep["weight"]], before["weight"][~keep["weight"]])
    assert (after["weight"][2] != before["weight"][2]).all()
    half = torch.nn.Linear(8, 6)
    half.load_state_dict(before)
    shrink_perturb(half, keep, 0.5, seed=0)  # half the old value plus half the same noise
    expected = 0.5 * before["weight"][2] + 0.5 * after["weight"][2]
    assert torch.allclose(half.weight[2], expected, atol=1e-6)
    with pytest.raises(UsageError, match=r"reinit must be in \(0, 1\]"):
        shrink_perturb(layer, keep, 1.5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_erasure_option_changes_only_the_located_parameters(arch: str, tmp_path: Path) -> None:
    """Subject erasure, re-initialise-and-repair and the adversary together: every parameter
    outside the slices of the located components (answer and name) stays bit-identical."""
    model = load_model(build_tiny_checkpoint(arch, tmp_path / arch))
    forget, retain, validation, reference = _sets()
    result = unlearn(
        model, forget, retain, method="loka", validation=validation, reference=reference, size=0.1,
        components="all", erase="subject", reinit=1.0, adversary_weight=1.0, target_forget_accuracy=0.0,
        max_steps=2, check_every=1, progress=False,
    )  # fmt: skip
    assert 0 < only_owned_weights_moved(model, result) <= result.config["chosen"]["parameters"]
    phases = [entry for entry in result.log if "phase_reinit" in entry]
    assert len(phases) == 1 and any("repair_loss" in entry for entry in result.log)
    assert any("attacked_forget_loss" in entry and "subject_loss" in entry for entry in result.log)


def test_erasure_options_are_checked(model, protocol) -> None:
    args = (model, protocol.forget, protocol.retain_train)
    with pytest.raises(UsageError, match="erase='subject' needs reference="):
        unlearn(*args, method="loka", erase="subject", progress=False)
    with pytest.raises(UsageError, match="reinit and adversary_weight work with edit='finetune'"):
        unlearn(*args, method="loka", edit="ablate", reinit=0.5, progress=False)
    with pytest.raises(UsageError, match="erase must be one of"):
        unlearn(*args, method="loka", erase="names", progress=False)
    with pytest.raises(UsageError, match="reinit must be"):
        unlearn(*args, method="loka", reinit=2.0, progress=False)


def test_the_adversary_runs_on_every_adversary_every_th_step(model, protocol, monkeypatch) -> None:
    """Steps 1, 4 and 7 of 7 with ``adversary_every=3``; its last loss is logged at every check."""
    attacks = []
    real = finetune.AttackedModel
    monkeypatch.setattr(finetune, "AttackedModel", lambda *a, **k: attacks.append(1) or real(*a, **k))
    result = unlearn(
        model, protocol.forget, protocol.retain_train, method="loka", validation=protocol.retain_validation,
        reference=protocol.reference, adversary_every=3, target_forget_accuracy=0.0, max_steps=7, check_every=2,
        progress=False,
    )  # fmt: skip
    assert len(attacks) == 3 and result.compute.steps == 7
    assert all("attacked_forget_loss" in entry for entry in result.log)
    with pytest.raises(UsageError, match="adversary_every must be"):
        unlearn(model, protocol.forget, protocol.retain_train, method="loka", adversary_every=0, progress=False)


def test_npo_unlearns_with_the_shared_budget(model, protocol) -> None:
    result = unlearn(
        model, protocol.forget, protocol.retain_train, validation=protocol.retain_validation, method="npo",
        max_steps=100, check_every=25, progress=False,
    )  # fmt: skip
    assert result.log[-1]["forget_accuracy"] <= 0.1 or result.compute.steps == 100
    assert result.log[-1]["forget_accuracy"] < 0.5
    assert result.config["beta"] == 0.1 and result.config["budget"]["max_steps"] == 100
    with pytest.raises(UsageError, match="unknown option for 'npo': 'size'"):
        unlearn(model, protocol.forget, protocol.retain_train, method="npo", size=0.1, progress=False)


@pytest.mark.slow
def test_subject_erasure_moves_whole_text_membership_toward_the_oracle(tiny_testbed, model, protocol) -> None:
    """Answer-only LOKA leaves the forget people's names memorised (whole-text MIA far above the
    oracle's); subject erasure brings the AUC toward the oracle's without going below it by more
    than the tolerance (0.15 here: 10 forget people, so an AUC moves by about 0.1 per person)."""

    def auc(edited) -> float:
        return loka.evaluate(edited, protocol=protocol, probe=False, relearn=False, quantize=False,
                             logit_lens=False).membership_inference_auc  # fmt: skip

    oracle = auc(loka.load_model(tiny_testbed.oracle_dir))
    common = dict(validation=protocol.retain_validation, reference=protocol.reference, adversary_weight=0.0,
                  max_steps=150, check_every=25, progress=False)  # fmt: skip
    answer = unlearn(model, protocol.forget, protocol.retain_train, method="loka", erase="answer", **common)
    subject = unlearn(model, protocol.forget, protocol.retain_train, method="loka", erase="subject", **common)
    before, after = auc(answer.model), auc(subject.model)
    assert subject.config["erase"] == "subject" and "subject_gap" in subject.log[-1]
    assert abs(after - oracle) < abs(before - oracle) - 0.1, (before, after, oracle)
    assert after >= oracle - 0.15, (after, oracle)


def test_subject_term_reads_the_forget_terms_rows_when_facts_carry_paraphrases(tiny_testbed, model, protocol) -> None:
    """Issue 24: with forget facts that carry paraphrases (the testbed's own forget.jsonl), the
    forget term's rows are every wording of every fact; the subject term and the adversary's fold
    read the same rows, so row ``i`` is the same text in every term (it was a fact index in the
    subject term: ``IndexError: index 44 is out of bounds for dimension 0 with size 30``)."""
    forget = tiny_testbed.forget
    assert any(f.paraphrases for f in forget)
    device = torch.device("cpu")
    term = ForgetTerm(model, forget, protocol.reference, "unknown", 0.1, model.tokenizer, device)
    subject = SubjectTerm(model, term.knowledge, protocol.retain_train, protocol.reference, model.tokenizer, device)
    assert len(subject) == len(term) == sum(1 + len(f.paraphrases) for f in forget) > len(forget)
    assert torch.equal(subject.batch.input_ids, term.batch.input_ids)
    # a paraphrase row's target is a reference text's NLL in that same paraphrase wording
    reference_texts = {f.text for f in Prompts.of(protocol.reference).knowledge}
    assert reference_texts > {f.text for f in protocol.reference}
    rows, kept = torch.tensor([len(term) - 1, len(forget), 0]), torch.tensor([0, 1])
    loss = subject(model.original_model, rows, kept)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_loka_unlearns_forget_facts_that_carry_paraphrases(tiny_testbed, model, protocol) -> None:
    """``loka.unlearn(model, tb.forget, tb.retain, reference=..., method="loka")`` on the testbed's
    own sets (forget facts with paraphrases): one step of subject erasure and the adversary reads
    every row (a batch of 64 covers all 60 wordings), and what the method saw includes the wordings."""
    result = unlearn(
        model, tiny_testbed.forget, tiny_testbed.retain, reference=protocol.reference, method="loka",
        max_steps=1, check_every=1, check_scores=0, progress=False,
    )  # fmt: skip
    assert result.config["erase"] == "subject" and result.config["adversary_weight"] == 1.0
    assert {"subject_loss", "attacked_forget_loss"} <= set(result.log[-1])
    paraphrase = tiny_testbed.forget[0].paraphrases[0]
    assert result.seen.clash(KnowledgeSet.from_records([{"prompt": paraphrase, "target": "x"}])) is not None
