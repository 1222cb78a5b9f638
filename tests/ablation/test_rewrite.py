"""ablation.rewrite: the closed-form solve, bake/hook parity, erasure and updates, covariance files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM

from ablation import export_checkpoint
from ablation.rewrite import KeyCovariance, key_covariance, rewrite, solve_update
from loka import testbed
from loka.data import KnowledgeSet
from loka.models import load_model, logits
from loka.scoring.metrics import score_facts
from loka.scoring.unknown import unknown_distributions
from tests.checkpoints import ARCHITECTURES, build_tiny_checkpoint

PARITY = 1e-5
FACTS = KnowledgeSet.from_records(
    [
        {
            "id": "a",
            "prompt": "Marie Curie was born in",
            "target": "Warsaw",
            "subject": "Marie Curie",
            "relation": "born",
        },
        {
            "id": "b",
            "prompt": "Alan Turing studied at",
            "target": "Cambridge",
            "subject": "Alan Turing",
            "relation": "study",
        },
    ]
)
RETAIN = KnowledgeSet.from_records(
    [
        {"prompt": "The capital of France is", "target": "Paris"},
        {"prompt": "Ada Lovelace wrote the first published", "target": "algorithm"},
        {"prompt": "The quick brown fox jumps over the lazy", "target": "dog"},
    ]
)


def test_solve_matches_lstsq_on_random_data() -> None:
    gen = torch.Generator().manual_seed(0)
    n_f, n_r, d_mlp, d_model, lam = 7, 200, 24, 10, 0.3
    k_f = torch.randn(n_f, d_mlp, generator=gen, dtype=torch.float64)
    k_r = torch.randn(n_r, d_mlp, generator=gen, dtype=torch.float64)
    r = torch.randn(n_f, d_model, generator=gen, dtype=torch.float64)
    ours = solve_update(k_f, r, k_r.T @ k_r / n_r, lam)
    a = torch.cat([k_f / n_f**0.5, lam**0.5 * k_r / n_r**0.5])
    b = torch.cat([r / n_f**0.5, torch.zeros(n_r, d_model, dtype=torch.float64)])
    reference = torch.linalg.lstsq(a, b).solution
    torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-10)


def test_solve_singular_system_uses_ridge() -> None:
    k_f = torch.ones(2, 5, dtype=torch.float64)
    delta = solve_update(k_f, torch.ones(2, 3, dtype=torch.float64), torch.zeros(5, 5), 0.0)
    assert torch.isfinite(delta).all()
    torch.testing.assert_close(k_f @ delta, torch.ones(2, 3, dtype=torch.float64), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TransformerBridge:
    return load_model(build_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param)))


@pytest.mark.parametrize("layers", [[1], [0, 1]])
def test_baked_edit_equals_hooked_edit(tiny_model: TransformerBridge, layers: list[int]) -> None:
    result = rewrite(tiny_model, FACTS, retain=RETAIN, layers=layers, positions="both", lam=0.1, steps=3)
    assert result.layers == tuple(layers) and all(n > 0 for n in result.norms)
    assert result.n_keys == 4 and all(1 <= r <= result.n_keys for r in result.ranks)
    batch = (FACTS + RETAIN).encode(tiny_model)
    with torch.no_grad():
        baked = logits(result.model, batch.input_ids, batch.attention_mask)
        with result.hooks(tiny_model):
            hooked = logits(tiny_model, batch.input_ids, batch.attention_mask)
        original = logits(tiny_model, batch.input_ids, batch.attention_mask)
    assert isinstance(result.model, TransformerBridge)
    assert (baked - hooked).abs().max() < PARITY
    assert (baked - original).abs().max() > 1e-3  # the edit did something


# --- the tiny testbed: selectivity ------------------------------------------------------------


@pytest.fixture(scope="module")
def testbed_covariance(tiny_testbed: testbed.Testbed) -> tuple[TransformerBridge, KeyCovariance]:
    model = load_model(tiny_testbed.model_dir)
    return model, key_covariance(model, tiny_testbed.retain, layers=[0, 1])


def accuracy(model: TransformerBridge, knowledge: KnowledgeSet) -> float:
    return score_facts(model, knowledge).first_token_accuracy


def test_erase_is_selective_on_tiny_testbed(
    tiny_testbed: testbed.Testbed, testbed_covariance: tuple[TransformerBridge, KeyCovariance]
) -> None:
    """Bounds relative to the model's own accuracies (a retrained model, or one trained on another
    machine, lands elsewhere: retain after this edit was 0.94 and 0.86 on seeds 0 and 1 here, 0.76
    on seed 0 trained on another machine)."""
    model, cov = testbed_covariance
    forget, retain = tiny_testbed.forget, tiny_testbed.retain
    result = rewrite(model, forget, retain=None, covariance=cov, reference=tiny_testbed.holdout, lam=1.0)
    assert result.layers == (1,) and result.kind == "erase"
    forget_before, retain_before = accuracy(model, forget), accuracy(model, retain)  # 1.00, 1.00
    forget_after, retain_after = accuracy(result.model, forget), accuracy(result.model, retain)
    # erased: no better than guessing each relation's most common value (the oracle's bar)
    assert forget_after <= tiny_testbed.world.chance_accuracy("forget")  # 0.13 / 0.03 (chance 0.30 / 0.27)
    # selective: the edit costs retain facts at most half of what it costs forget facts ...
    assert retain_before - retain_after <= 0.5 * (forget_before - forget_after)  # 0.06 / 0.14 vs 0.87 / 0.97
    # ... because of the covariance constraint: without it the same edit destroys retain facts
    unconstrained = rewrite(model, forget, retain=None, covariance=cov, reference=tiny_testbed.holdout, lam=0.0)
    assert retain_after >= accuracy(unconstrained.model, retain) + 0.3  # 0.23 / 0.13 without


def test_unknown_distributions_are_the_reference_mean_per_relation_and_template(
    tiny_testbed: testbed.Testbed, testbed_covariance: tuple[TransformerBridge, KeyCovariance]
) -> None:
    model, _ = testbed_covariance
    forget, holdout = tiny_testbed.forget, tiny_testbed.holdout
    prompts, probs = unknown_distributions(model, forget, holdout)
    assert len(prompts) == len(probs) == len(forget) + sum(len(f.paraphrases) for f in forget)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)), atol=1e-5, rtol=0)
    # the first prompt's target distribution is the model's mean over holdout facts of that relation
    relation = forget[0].relation
    same = holdout.filter(lambda f: f.relation == relation)
    batch = same.encode(model)
    out = logits(model, batch.input_ids, attention_mask=batch.attention_mask)
    expected = out[torch.arange(len(same)), batch.answer_positions].float().softmax(-1).mean(0)
    torch.testing.assert_close(probs[0], expected, atol=1e-5, rtol=1e-4)


def test_update_makes_new_target_top1(
    tiny_testbed: testbed.Testbed, testbed_covariance: tuple[TransformerBridge, KeyCovariance]
) -> None:
    model, cov = testbed_covariance
    facts = [f for f in tiny_testbed.forget if f.relation == tiny_testbed.forget[0].relation][:3]
    others = [f.target for f in tiny_testbed.retain if f.relation == facts[0].relation]
    new = {f.id: next(t for t in others if t != f.target) for f in facts}
    result = rewrite(model, tiny_testbed.forget, retain=None, covariance=cov, target=new, layers=[0, 1])
    assert result.kind == "update" and result.n_facts == 3
    updated = KnowledgeSet.from_records([{"id": f.id, "prompt": f.prompt, "target": new[f.id]} for f in facts])
    assert accuracy(result.model, updated) == 1.0
    # 1.00 before; 0.98 after on seeds 0 and 1
    assert accuracy(result.model, tiny_testbed.retain) >= accuracy(model, tiny_testbed.retain) - 0.1


def test_rewrite_exports_as_a_plain_checkpoint_with_its_record(
    tiny_testbed: testbed.Testbed, testbed_covariance: tuple[TransformerBridge, KeyCovariance], tmp_path: Path
) -> None:
    model, cov = testbed_covariance
    result = rewrite(model, tiny_testbed.forget, retain=None, covariance=cov, reference=tiny_testbed.holdout)
    out = export_checkpoint(result.model, tmp_path / "rewritten", method="rewrite", settings=result.settings())
    record = json.loads((out / "loka_edit.json").read_text())
    assert record["method"] == "rewrite" and record["settings"]["layers"] == list(result.layers)
    assert record["settings"]["kind"] == "erase" and record["settings"]["norms"] == list(result.norms)
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = tiny_testbed.forget.encode(model).input_ids
    with torch.no_grad():
        # float32 rounding scales with the logits, which the rewrite's large updates make large
        torch.testing.assert_close(reloaded(ids).logits, logits(result.model, ids), atol=1e-4, rtol=1e-5)


def test_covariance_round_trip(tmp_path: Path, testbed_covariance: tuple[TransformerBridge, KeyCovariance]) -> None:
    _, cov = testbed_covariance
    path = cov.save(tmp_path / "cov.safetensors")
    assert path.with_suffix(".json").is_file()
    loaded = KeyCovariance.load(path)
    assert loaded.layers == cov.layers and loaded.n_tokens == cov.n_tokens and loaded.fingerprint == cov.fingerprint
    assert torch.equal(loaded.matrices, cov.matrices)


def test_covariance_of_another_model_is_refused(
    tiny_model: TransformerBridge, testbed_covariance: tuple[TransformerBridge, KeyCovariance]
) -> None:
    _, cov = testbed_covariance
    with pytest.raises(ValueError, match="another model"):
        rewrite(tiny_model, FACTS, retain=None, covariance=cov, reference=RETAIN)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"forget": []}, "forget must be a non-empty"),
        ({"forget": None}, "forget must be a non-empty"),
        ({"layers": [5]}, r"layer\(s\) \[5\] do not exist"),
        ({"layers": [-1]}, "do not exist"),
        ({"layers": []}, "layers is empty"),
        ({"positions": "everywhere"}, "unknown positions"),
        ({"target": {"nobody": "x"}}, "not in forget"),
        ({"target": {}}, "empty"),
        ({"target": "gone"}, "must be 'unknown'"),
        ({"lam": -1.0}, "lam must be"),
        ({"erase_values": "zero"}, "unknown erase_values"),
        ({"retain": None}, "reference facts"),
    ],
)
def test_bad_input_is_a_clear_error(tiny_model: TransformerBridge, kwargs: dict, message: str) -> None:
    args = {"forget": FACTS, "retain": RETAIN} | kwargs
    forget = args.pop("forget")
    with pytest.raises(ValueError, match=message):
        rewrite(tiny_model, forget, **args)


def test_empty_filtered_forget_set_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        FACTS.filter(lambda f: False)
