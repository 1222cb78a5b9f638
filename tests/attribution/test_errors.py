"""Bad input is a ValueError that says what is wrong (and what is allowed), before any work."""

from __future__ import annotations

import re

import pytest
import torch

import attribution
from attribution import Corruption
from loka.data import Fact, KnowledgeSet
from loka.models import load_model, neuron_output_weights
from loka.testbed import Testbed


@pytest.fixture(scope="module")
def facts(tiny_testbed: Testbed) -> KnowledgeSet:
    return KnowledgeSet(tiny_testbed.forget.facts[:3])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"method": "saliency"},
            r"unknown method 'saliency'; use one of 'grad_x_act', 'activation_patching', 'integrated_gradients', "
            r"'activation_magnitude', 'learned_mask'",
        ),
        ({"baseline": "noise"}, r"unknown baseline 'noise'; use one of 'zero', 'mean', 'resample', 'corrupt'"),
        ({"direction": "forward"}, r"unknown direction 'forward'; use one of 'ablate', 'denoise'"),
        ({"components": ("mlp",)}, r"unknown components 'mlp'; use 'neurons', 'heads' or both"),
        ({"components": [("neuron", 0, 1)]}, r"unknown components .* use attribution.patch_components"),
        ({"components": ()}, r"components is empty"),
        ({"positions": "first"}, r"unknown positions 'first'; use one of 'all', 'last', 'subject'"),
        ({"metric": "accuracy"}, r"unknown metric 'accuracy'"),
        ({"metric": "logit_diff"}, r"metric='logit_diff' needs contrast="),
        ({"baseline": "corrupt", "corruption": "blur"}, r"unknown corruption 'blur'; use one of 'noise', 'subject'"),
        (
            {"baseline": "zero", "direction": "denoise"},
            r"direction='denoise' .* needs baseline='corrupt' \(got baseline='zero'\)",
        ),
        (
            {"baseline": "zero", "corruption": "noise"},
            r"a corruption only applies to baseline='corrupt', not baseline='zero'",
        ),
        (
            {"baseline": "zero", "donors": "self"},
            r"a donor set \(donors=\) is only read by baseline='mean', baseline='resample'",
        ),
        ({"donors": "self"}, r"a donor set \(donors=\) is only read by .* not by baseline='corrupt'"),
        ({"baseline": "zero", "samples": 3}, r"baseline='zero' is deterministic; samples must be 1, got 3"),
        (
            {"baseline": "corrupt", "samples": 3},
            r"give the number of corrupted samples once, in Corruption\(samples=...\); samples=3 is for",
        ),
        ({"samples": 3}, r"baseline='zero' is deterministic; samples must be 1, got 3"),  # neurons' recommended
        ({"baseline": "resample", "samples": 0}, r"samples must be a positive integer, got 0"),
        ({"batch_size": 0}, r"batch_size must be an integer at least 1, got 0"),
        ({"method": "activation_patching", "chunk_size": 0}, r"chunk_size must be at least 1, got 0"),
        (
            {"baseline": "corrupt", "corruption": Corruption("noise", samples=2), "samples": 2},
            r"give the number of corrupted samples once",
        ),
    ],
)
def test_bad_options(model, facts, options, message):
    if options.get("donors") == "self":
        options = options | {"donors": facts}
    with pytest.raises(ValueError, match=message):
        attribution.attribute(model, facts, progress=False, **options)


def test_bad_corruption_settings():
    with pytest.raises(ValueError, match="corruption samples must be a positive integer, got 0"):
        Corruption("noise", samples=0)
    with pytest.raises(ValueError, match="noise_scale must be positive, got -1"):
        Corruption("noise", noise_scale=-1)
    with pytest.raises(ValueError, match="unknown corruption 'shuffle'"):
        Corruption("shuffle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown corruption span 'question'; use one of 'auto', 'subject', 'prompt'"):
        Corruption("noise", span="question")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"corruption 'subject' replaces the subject; span='prompt' is for 'noise' only"
    ):
        Corruption("subject", span="prompt")


def test_empty_sets_and_empty_targets(model):
    with pytest.raises(ValueError, match="the knowledge set is empty: attribution needs at least one fact"):
        attribution.attribute(model, [], progress=False)
    with pytest.raises(ValueError, match="KnowledgeSet 'knowledge' is empty"):
        KnowledgeSet(())
    with pytest.raises(ValueError, match=r"expected a KnowledgeSet \(or a sequence of Facts\), got str"):
        attribution.attribute(model, "Ann was born in Paris", progress=False)
    nothing = KnowledgeSet((Fact("f", "Ann was born in ", ""),))  # joined as-is: no target tokens
    with pytest.raises(ValueError, match=r"fact 'f': target '' tokenizes to no tokens"):
        attribution.attribute(model, nothing, progress=False)
    with pytest.raises(ValueError, match=r"fact 'f': target '' tokenizes to no tokens"):
        attribution.layer_scan(model, nothing, progress=False)


def test_components_that_do_not_exist(model, facts):
    with pytest.raises(ValueError, match=r"component L5N0: layer 5 does not exist \(model has 2 layers\)"):
        attribution.patch_components(model, facts, [("neuron", 5, 0)])
    with pytest.raises(ValueError, match=r"component L0H9: index 9 is out of range \(n_heads = 4\)"):
        attribution.patch_components(model, facts, ["L0H9"])
    with pytest.raises(ValueError, match="unknown kind 'layer'"):
        attribution.patch_components(model, facts, [("layer", 0, 0)])
    with pytest.raises(ValueError, match="no components to patch"):
        attribution.patch_components(model, facts, [])
    with pytest.raises(ValueError, match="unknown site 'embed'; use one of 'resid_pre', 'attn_out', 'mlp_out'"):
        attribution.layer_scan(model, facts, sites=("embed",), progress=False)


def test_positions_and_corruptions_that_need_a_subject(model):
    """Subject positions, the subject span of the noise, and subject replacement need a subject in
    the prompt; the default noise (span "auto") does not (tests/attribution/test_validation.py)."""
    anonymous = KnowledgeSet((Fact("x", "Someone was born in", "Oslo"),))
    with pytest.raises(ValueError, match=r"positions='subject' needs every fact to name a subject .* e.g. 'x'"):
        attribution.attribute(model, anonymous, positions="subject", progress=False)
    with pytest.raises(ValueError, match=r"span 'subject' needs every fact to name a subject .* e.g. 'x'"):
        attribution.attribute(model, anonymous, corruption=Corruption("noise", span="subject"), progress=False)
    with pytest.raises(ValueError, match=r"corruption 'subject' replaces each fact's subject; 1 fact\(s\) .* e.g. 'x'"):
        attribution.attribute(model, anonymous, corruption="subject", donors=anonymous, progress=False)
    misplaced = KnowledgeSet((Fact("y", "Someone was born in", "Oslo", subject="Ann Lee"),))  # not in the prompt
    with pytest.raises(ValueError, match=r"positions='subject' needs every fact to name a subject .* e.g. 'y'"):
        attribution.attribute(model, misplaced, positions="subject", progress=False)


def test_corruptions_and_donors_that_cannot_be_found(model, facts):
    long_names = Corruption("subject", subjects=("Abcdefgh Ijklmnop Qrstuvwx Yz",))
    subject, fact_id = re.escape(facts[0].subject), re.escape(facts[0].id)
    with pytest.raises(ValueError, match=rf"no replacement for '{subject}' .* same token length among 1 candidate"):
        attribution.attribute(model, facts, baseline="corrupt", corruption=long_names, progress=False)
    one = KnowledgeSet(facts.facts[:1])
    with pytest.raises(ValueError, match=rf"baseline='resample' needs another fact .* for fact '{fact_id}'"):
        attribution.attribute(model, one, baseline="resample", progress=False)


def test_models_that_cannot_be_read(tiny_testbed, facts):
    with pytest.raises(ValueError, match="attribution reads a TransformerLens TransformerBridge"):
        attribution.attribute(torch.nn.Linear(2, 2), facts, progress=False)
    model = load_model(tiny_testbed.model_dir)
    model.train()
    with pytest.raises(ValueError, match=r"training mode .* call model.eval\(\) first"):
        attribution.attribute(model, facts, progress=False)


def test_non_finite_results_are_never_returned(tiny_testbed, facts):
    broken = load_model(tiny_testbed.model_dir)  # this test's own copy: it breaks one weight
    with torch.no_grad():
        neuron_output_weights(broken, 1, 7).of(broken).fill_(float("nan"))
    for method in ("grad_x_act", "activation_patching"):
        for baseline in ("zero", "corrupt"):
            with pytest.raises(ValueError, match=r"the unpatched metric is not finite for 3 entries, e.g. fact"):
                attribution.attribute(
                    broken, facts, method=method, components="heads", baseline=baseline, progress=False
                )
    with pytest.raises(ValueError, match="is not finite"):
        attribution.layer_scan(broken, facts, progress=False)
