"""layer_scan (causal tracing) equals TL's per-layer, per-position patching on the tiny testbed."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching

import attribution
from attribution import corrupted_run
from attribution.positions import POSITION_CLASSES
from loka.data import KnowledgeSet
from loka.testbed import Testbed

TL_SWEEPS = {
    "resid_pre": patching.get_act_patch_resid_pre,
    "attn_out": patching.get_act_patch_attn_out,
    "mlp_out": patching.get_act_patch_mlp_out,
}


@pytest.fixture(scope="module")
def facts(tiny_testbed: Testbed) -> KnowledgeSet:
    return KnowledgeSet(tiny_testbed.forget.facts[:8], name="forget8")


@pytest.fixture(scope="module")
def scan(model, facts, pool) -> attribution.LayerScan:
    return attribution.layer_scan(
        model, facts, corruption="subject", donors=pool, batch_size=3, chunk_size=7, progress=False
    )


def test_every_site_equals_tl(model, facts, pool, scan):
    """Restoring the clean residual / attention / MLP output at one (layer, position) of the
    subject-replaced run: TL's get_act_patch_{resid_pre, attn_out, mlp_out} on the same tokens."""
    batch = facts.encode(model)
    corrupt = corrupted_run(model, facts, "subject", donors=pool).input_ids

    def metric(logits):
        return batch.target_log_probs(logits).sum(-1).mean()

    with torch.no_grad():
        _, clean_cache = model.run_with_cache(batch.input_ids)
        corrupted = metric(model(corrupt))
    assert scan.sites == ("resid_pre", "attn_out", "mlp_out")
    for index, site in enumerate(scan.sites):
        tl = TL_SWEEPS[site](model, corrupt, clean_cache, metric) - corrupted
        assert tl.shape == scan.mean()[index].shape == (model.cfg.n_layers, batch.input_ids.shape[1])
        assert (scan.mean()[index] - tl).abs().max() < 1e-4
    assert scan.base_metric.mean() == pytest.approx(corrupted.item(), abs=1e-4)


def test_scan_shows_where_the_subject_is_read(scan):
    """At layer 0 the residual stream is the token (and position) embedding, and the corrupted
    run differs from the clean one only at the subject tokens: restoring any other position
    there changes nothing, restoring a subject token does (on the facts whose answer the
    replacement subject changed: another person may share the answer)."""
    resid = scan.effects[:, 0, 0]  # [fact, pos]: resid_pre of layer 0
    subject_classes = [POSITION_CLASSES.index(c) for c in ("first subject", "middle subject", "last subject")]
    subject = torch.isin(scan.classes, torch.tensor(subject_classes))
    assert resid[~subject].abs().max() < 1e-4
    hurt = scan.clean_metric - scan.base_metric > 0.1  # 8 of 8 facts on seed 0, 7 of 8 on seed 1
    assert hurt.sum() >= len(hurt) // 2
    assert (resid * subject).sum(-1)[hurt].gt(0.01).all()
    assert (scan.effects.permute(0, 3, 1, 2)[scan.classes < 0] == 0).all()  # padding is exactly 0


def test_by_class_and_plots(scan, facts):
    summary, present = scan.by_class()
    names = [POSITION_CLASSES[c] for c in present]
    assert names == ["BOS", "first subject", "last subject", "first subsequent", "further", "last prompt", "target"]
    assert summary.shape == (3, 2, len(present))
    # The class mean of a class that holds one position per fact is the mean over facts there.
    last = POSITION_CLASSES.index("last prompt")
    per_fact = torch.stack([scan.effects[f, :, :, int((scan.classes[f] == last).nonzero())] for f in range(len(facts))])
    assert torch.allclose(summary[..., present.index(last)], per_fact.mean(0), atol=1e-6)

    figure = scan.plot()
    assert len(figure.data) == 3 and all(trace.type == "heatmap" for trace in figure.data)
    assert list(figure.data[0].x) == names and list(figure.data[0].y) == [0, 1]
    assert figure.data[0].zmid == 0
    one = scan.plot(fact=facts[1].id)
    assert list(one.data[2].x)[1:3] == [f"1: {scan.tokens[1][1]}", f"2: {scan.tokens[1][2]}"]
    with pytest.raises(ValueError, match="no fact 'nobody' in this scan"):
        scan.plot(fact="nobody")
