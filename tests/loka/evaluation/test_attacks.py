"""The quantization attack and the logit lens: rounding by hand, a constructed suppression that
4-bit rounding undoes (and the oracle it does not), the lens against TransformerLens' own
residual stream and the model's output, the evaluation's rows, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import loka
from loka.base.errors import UsageError
from loka.evaluation import evaluate
from loka.evaluation.attacks.logit_lens import LogitLens, logit_lens, logit_lens_informative
from loka.evaluation.attacks.quantization import (
    Quantization,
    _quantized_weights,
    quantization_attack,
    quantization_informative,
    quantize,
    quantize_weight,
)
from loka.models import hf_state_dict, plain_copy
from loka.models import logits as model_logits
from loka.protocol import Protocol
from loka.scoring.metrics import score_facts
from loka.testbed.checkpoints import ARCHITECTURES, build_tiny_checkpoint


@pytest.fixture(scope="module")
def models(tiny_testbed):
    return loka.load_model(tiny_testbed.model_dir), loka.load_model(tiny_testbed.oracle_dir)


@pytest.fixture(scope="module")
def protocol(tiny_testbed):
    return Protocol.from_testbed(tiny_testbed)


# --- (a) the rounding ---------------------------------------------------------------------------
def test_4bit_rounding_matches_a_hand_computation():
    W = torch.tensor(
        [
            [1.0, -0.45, 0.26, 0.0],  # absmax 1: step 1/7; -3.15 -> -3, 1.82 -> 2
            [0.2, 0.11, -0.05, 0.0],  # absmax 0.2: step 0.2/7; 3.85 -> 4, -1.75 -> -2
            [0.0, 0.0, 0.0, 0.0],  # all zero: stays zero
        ]
    )
    expected = torch.tensor(
        [[7 / 7, -3 / 7, 2 / 7, 0.0], [7 * 0.2 / 7, 4 * 0.2 / 7, -2 * 0.2 / 7, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    out = quantize_weight(W.clone(), 4)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)
    # groups of 2: each half row has its own absmax; 0.3 / (1/7) = 2.1 -> 2; -0.01 / (0.07/7) = -1
    grouped = quantize_weight(torch.tensor([[1.0, 0.3, 0.07, -0.01]]), 4, group_size=2)
    torch.testing.assert_close(grouped, torch.tensor([[1.0, 2 / 7, 0.07, -0.01]]), rtol=0, atol=1e-7)
    # 8 bits: 127 levels per side; 0.26 * 127 = 33.02 -> 33
    torch.testing.assert_close(quantize_weight(torch.tensor([[1.0, 0.26]]), 8), torch.tensor([[1.0, 33 / 127]]))
    # in place, in the weight's own dtype, through a transposed view (a Conv1D's [in, out] weight)
    half = W.T.contiguous().to(torch.bfloat16)
    assert quantize_weight(half.T, 4).data_ptr() == half.data_ptr() and half.dtype == torch.bfloat16
    torch.testing.assert_close(half.T.float(), expected.to(torch.bfloat16).float())


def test_quantize_rounds_only_block_weights_per_output_channel(models):
    model, _ = models
    before = {k: v.clone() for k, v in hf_state_dict(model).items()}
    for bits, group in ((8, None), (4, None), (4, 32)):
        copy = quantize(model, bits, group_size=group)
        assert isinstance(copy, type(model))  # a bridge for a bridge
        after = hf_state_dict(copy)
        names = {f"{n}.weight" for n, _ in _quantized_weights(plain_copy(model))}
        assert names and all(".h." in n for n in names)  # attention and MLP projections of each block
        for name, value in after.items():
            if name in names:
                assert not torch.equal(value, before[name])
            else:  # biases, layer norms, embeddings, the (tied) unembedding
                assert torch.equal(value, before[name]), name
        # GPT-2's Conv1D stores [in, out]: each output channel is a column, an integer multiple of
        # its group's absmax / 7 (or / 127), and the absmax itself is kept
        q_max = 2 ** (bits - 1) - 1
        W = after["transformer.h.0.mlp.c_fc.weight"].T  # [d_mlp, d_model]
        W0 = before["transformer.h.0.mlp.c_fc.weight"].T
        g = W.shape[1] if group is None else group
        for start in range(0, W.shape[1], g):
            scale = W0[:, start : start + g].abs().amax(1, keepdim=True) / q_max
            levels = W[:, start : start + g] / scale
            torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
            assert levels.abs().max() <= q_max + 1e-4
            torch.testing.assert_close(W[:, start : start + g].abs().amax(1), W0[:, start : start + g].abs().amax(1))
    for name, value in hf_state_dict(model).items():  # the input model is untouched
        assert torch.equal(value, before[name])


def test_8bit_is_close_to_the_original_and_4bit_further(models, tiny_testbed):
    model, _ = models
    batch = tiny_testbed.forget.encode(model.tokenizer)
    with torch.no_grad():
        ref = model_logits(model, batch.input_ids, attention_mask=batch.attention_mask)
        gaps = {}
        for bits in (8, 4):
            out = model_logits(quantize(model, bits), batch.input_ids, attention_mask=batch.attention_mask)
            gaps[bits] = float((out - ref).abs().max() / ref.abs().max())
    assert gaps[8] < 0.01  # measured 0.002 on the tiny testbed
    assert gaps[8] < gaps[4] < 0.2


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_quantize_and_lens_on_every_architecture(arch, tmp_path):
    model = loka.load_model(build_tiny_checkpoint(arch, tmp_path))
    before, after = hf_state_dict(model), hf_state_dict(quantize(model, 4, group_size=16))
    linear = [m for m in plain_copy(model).modules() if isinstance(m, nn.Linear | Conv1D)]
    changed = [n for n, value in after.items() if not torch.equal(value, before[n])]
    assert changed and all(n.endswith(".weight") and "embed" not in n and "lm_head" not in n for n in changed)
    assert len(changed) == len(linear) - 1  # every Linear / Conv1D but the unembedding
    facts = loka.KnowledgeSet.from_records(
        [{"prompt": f"token {i} is", "target": f" {w}", "id": str(i)} for i, w in enumerate("abcdefgh")]
    )
    _lens_is_the_model_output(model, facts)


# --- (b) the constructed case: a suppression inside the 4-bit rounding step ---------------------
def _suppress(model, forget, retain, *, bits=4, group=128, margin=0.45, lr=3e-3, max_steps=60):
    """A plain copy of ``model`` whose quantized weights each stayed inside their ``bits``-bit
    rounding bin (within ``margin`` steps of the grid point they round to; the absmax of a group
    never moves, so the grid stays), trained until no forget answer is top-1 (keeping ``retain``):
    4-bit rounding maps it back onto the original, exactly."""
    copy = plain_copy(model)
    for p in copy.parameters():
        p.requires_grad_(False)
    modules = dict(copy.named_modules())
    views = dict(_quantized_weights(copy))
    params = [modules[name].weight.requires_grad_(True) for name in views]
    q_max, bounds = 2 ** (bits - 1) - 1, {}
    for name, V in views.items():
        lo, hi = V.clone(), V.clone()
        for start in range(0, V.shape[1], group):
            block = V[:, start : start + group]
            absmax = block.abs().amax(1, keepdim=True)
            step = absmax / q_max
            level = (block / step).round()
            keep = block.abs() == absmax
            lo[:, start : start + group] = torch.where(keep, block, torch.maximum((level - margin) * step, -absmax))
            hi[:, start : start + group] = torch.where(keep, block, torch.minimum((level + margin) * step, absmax))
        bounds[name] = lo, hi
    f, r = forget.encode(model.tokenizer), retain.encode(model.tokenizer)
    optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(max_steps):
        rows = torch.arange(len(f))
        out = model_logits(copy, f.input_ids, attention_mask=f.attention_mask)[rows, f.answer_positions]
        answer = out[rows, f.target_ids[:, 0]]
        other = out.scatter(1, f.target_ids[:, :1], float("-inf")).amax(1)
        if (answer < other).all():
            break
        kept = model_logits(copy, r.input_ids, attention_mask=r.attention_mask)
        kept = kept[torch.arange(len(r)), r.answer_positions]
        loss = torch.relu(answer - other + 1).mean() + nn.functional.cross_entropy(kept, r.target_ids[:, 0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for name, V in views.items():
                V.copy_(torch.minimum(torch.maximum(V, bounds[name][0]), bounds[name][1]))
    for p in params:
        p.requires_grad_(False)
    return copy


@pytest.fixture(scope="module")
def suppressed(models, protocol):
    return _suppress(models[0], protocol.forget, protocol.retain_train)


def test_4bit_quantization_restores_a_suppression_inside_the_rounding_step(models, protocol, suppressed):
    model, oracle = models
    tokenizer = model.tokenizer
    # the edit is tiny: every weight moved by less than one 4-bit step, and stayed in its rounding bin
    before, after = hf_state_dict(model), hf_state_dict(suppressed)
    moved = [n for n in before if not torch.equal(after[n], before[n])]
    assert moved and all(".h." in n and n.endswith(".weight") for n in moved)
    for name, V in _quantized_weights(plain_copy(model)):
        delta = dict(_quantized_weights(suppressed))[name] - V
        for start in range(0, V.shape[1], 128):
            step = V[:, start : start + 128].abs().amax(1, keepdim=True) / 7  # per output channel and group
            assert (delta[:, start : start + 128].abs() < step).all()
    # it suppresses: the answers are gone, retain stays
    assert score_facts(suppressed, protocol.forget, tokenizer=tokenizer).first_token_accuracy == 0.0
    assert score_facts(suppressed, protocol.retain_eval, tokenizer=tokenizer).first_token_accuracy >= 0.8  # 0.87
    attack = quantization_attack(suppressed, tokenizer, protocol.forget, protocol.retain_eval)
    original = quantization_attack(model, None, protocol.forget, protocol.retain_eval)
    reference = quantization_attack(oracle, None, protocol.forget, protocol.retain_eval)
    # 4 bits map the suppressed weights onto the original's grid: the answers come back
    assert attack.before == 0.0 and attack.forget_4bit >= 0.9
    assert attack.at(4).forget_correct == original.at(4).forget_correct
    assert attack.retain_accuracy(4) >= 0.9
    # 8 bits have a 16x finer grid, finer than this edit: still suppressed
    assert attack.forget_8bit <= 0.1
    # the oracle never knew: its quantized copies answer what it answers
    assert abs(reference.forget_4bit - reference.before) <= 0.1 and reference.forget_4bit <= 0.2
    assert attack.forget_4bit - reference.forget_4bit >= 0.7
    # the attack tells the original from the oracle, and the oracle not from itself
    assert quantization_informative(original, reference, bits=4)
    assert quantization_informative(original, reference, bits=8)
    assert not quantization_informative(reference, reference, bits=4)


# --- (c) the logit lens -------------------------------------------------------------------------
def _lens_is_the_model_output(model, facts) -> LogitLens:
    lens = logit_lens(model, None, facts)
    batch = facts.encode(model.tokenizer)
    with torch.no_grad():
        out = model_logits(model, batch.input_ids, attention_mask=batch.attention_mask)
    rows = torch.arange(len(batch))
    top = out[rows, batch.answer_positions].argmax(-1)
    assert list(lens.predicted[-1]) == top.tolist()  # the last block's readout is the model's prediction
    assert torch.equal(torch.tensor(lens.correct[-1]), score_facts(model, facts).first_token_correct)
    assert lens.final == pytest.approx(score_facts(model, facts).first_token_accuracy)
    return lens


def test_logit_lens_reads_transformer_lens_residual_stream(models, tiny_testbed):
    model, oracle = models
    facts = tiny_testbed.forget
    lens = _lens_is_the_model_output(model, facts)
    # each block: TL's own residual stream after it, through TL's ln_final and unembed
    batch = facts.encode(model.tokenizer)
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
    rows = torch.arange(len(batch))
    for layer in range(lens.n_layers):
        resid = cache[f"blocks.{layer}.hook_out"][rows, batch.answer_positions]
        with torch.no_grad():
            logits = model.unembed(model.ln_final(resid))
        assert list(lens.predicted[layer]) == logits.argmax(-1).tolist()
        log_p = logits.log_softmax(-1)[rows, batch.target_ids[:, 0]]
        np.testing.assert_allclose(lens.answer_log_prob[layer], log_p.numpy(), atol=1e-4)
    # a plain HF copy reads the same
    hf_lens = logit_lens(plain_copy(model), model.tokenizer, facts)
    assert hf_lens.correct == lens.correct and hf_lens.predicted == lens.predicted
    assert lens.best == max(lens.per_layer) and lens.per_layer[lens.best_layer] == lens.best
    reference = logit_lens(oracle, None, facts)
    assert lens.best >= 0.9 and reference.best <= 0.2
    assert logit_lens_informative(lens, reference) and not logit_lens_informative(reference, reference)
    figure = lens.plot(reference)
    assert [t.name for t in figure.data] == ["model", "oracle"]
    assert list(figure.data[0].y) == list(lens.per_layer)


# --- (d) the evaluation -------------------------------------------------------------------------
def test_evaluation_reports_both_attacks_beside_the_oracle(models, protocol, suppressed):
    model, oracle = models
    common = dict(protocol=protocol, probe=False, relearn=False)
    ev = evaluate(model, oracle=oracle, **common)
    ref = ev.oracle
    assert isinstance(ev.quantization, Quantization) and isinstance(ev.logit_lens, LogitLens)
    assert ev.quantization == quantization_attack(model, None, protocol.forget, protocol.retain_eval)
    assert ev.logit_lens == logit_lens(model, None, protocol.forget)
    assert ref.quantization is not None and ref.logit_lens is not None
    rows = dict(ev.rows())
    assert rows["quant 8-bit forget"] == ev.quantization.forget_8bit
    assert rows["quant 4-bit forget"] == ev.quantization.forget_4bit
    assert rows["quant 4-bit retain"] == ev.quantization.retain_accuracy(4)
    assert rows["logit lens forget (best)"] == ev.logit_lens.best
    table = ev.table()
    assert "quant 4-bit forget" in table and "logit lens forget (best)" in table
    for key in ("quant.8bit.forget", "quant.4bit.forget", "quant.4bit.retain", "logit_lens"):
        people, values = ev.details[key]
        assert people == tuple(f.subject for f in (protocol.retain_eval if "retain" in key else protocol.forget))
    assert np.mean(ev.details["quant.4bit.forget"][1]) == pytest.approx(ev.quantization.forget_4bit)
    assert np.mean(ev.details["logit_lens"][1]) == pytest.approx(ev.logit_lens.best)
    out = json.loads(json.dumps(ev.to_dict()))
    assert out["logit_lens"]["best"] == ev.logit_lens.best
    assert out["quantization"]["points"][1]["bits"] == 4
    assert out["oracle"]["quantization"]["points"][1]["forget_accuracy"] == ref.quantization.forget_4bit
    assert "Quantization restores" not in ev.verdict()  # the original forgot nothing to restore
    # the constructed suppression: the verdict names the restoration, beside the oracle
    edited = evaluate(loka.models.same_kind_as(suppressed, model), oracle=ref, **common)
    assert edited.forget_accuracy == 0.0
    assert (
        f"Quantization restores the forget answers: 4-bit forget {edited.quantization.forget_4bit:.0%} "
        f"vs oracle {ref.quantization.forget_4bit:.0%}"
    ) in edited.verdict()
    off = evaluate(model, quantize=False, logit_lens=False, **common)
    assert off.quantization is None and off.logit_lens is None and "logit_lens" not in off.details
    assert "quant 4-bit forget" not in dict(off.rows())


# --- (e) errors ---------------------------------------------------------------------------------
def test_bad_inputs_give_one_line_usage_errors(models, protocol):
    model, _ = models
    attack = quantization_attack(model, None, protocol.forget, protocol.retain_eval, schemes=((8, None),))
    cases = [
        (lambda: quantize(model, 3), r"bits must be one of \(4, 8\), got 3"),
        (lambda: quantize(model, True), "bits must be one of"),
        (lambda: quantize(model, 4, group_size=0), "group_size must be a positive integer or None"),
        (lambda: quantize("model", 4), "expected a TransformerBridge or a transformers PreTrainedModel"),
        (lambda: quantize_weight(torch.ones(3), 4), r"2-D \[d_out, d_in\] weight, got shape \(3,\)"),
        (lambda: quantization_attack(model, None, protocol.forget, protocol.retain_eval, schemes=()), "empty"),
        (
            lambda: quantization_attack(model, None, protocol.forget, protocol.forget, schemes=((4, 8), (4, 16))),
            "repeat a bit width",
        ),  # fmt: skip
        (lambda: quantization_attack(model, None, [], protocol.retain_eval), "forget must be a non-empty KnowledgeSet"),
        (lambda: attack.at(4), r"ran at \(8,\) bits, not 4"),
        (lambda: logit_lens(model, None, "facts"), "facts must be a non-empty KnowledgeSet"),
        (lambda: logit_lens(model, None, protocol.forget, batch_size=0), "batch_size must be a positive integer"),
    ]
    for call, message in cases:
        with pytest.raises(UsageError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
