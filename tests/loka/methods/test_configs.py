"""Each method's typed config: built from keywords, validated at construction, read from text."""

from __future__ import annotations

import dataclasses
import json

import pytest

import loka.methods
from loka.base.errors import UsageError
from loka.methods import CONFIGS, GradientAscentConfig, LokaConfig, RetrainConfig, TaskVectorConfig, method_config


def test_keywords_build_the_same_config_as_the_class():
    assert method_config("loka", size=0.02, location="random") == LokaConfig(size=0.02, location="random")
    assert method_config("gradient_ascent") == GradientAscentConfig()
    given = TaskVectorConfig(scales=[1.0, 2.0])  # a list from JSON becomes a tuple
    assert given.scales == (1.0, 2.0) and method_config("task_vector", given) is given
    with pytest.raises(dataclasses.FrozenInstanceError):
        given.lr = 1.0  # type: ignore[misc]


def test_unknown_options_list_the_methods_options():
    with pytest.raises(UsageError) as raised:
        method_config("gradient_ascent", learning_rate=1.0)
    assert str(raised.value) == (
        "unknown option for 'gradient_ascent': 'learning_rate'; options are lr, alpha, batch_size"
    )
    with pytest.raises(UsageError, match="unknown unlearning method 'frob'"):
        method_config("frob")
    with pytest.raises(UsageError, match="either as config= or as keywords, not both"):
        method_config("loka", LokaConfig(), size=0.02)
    with pytest.raises(UsageError, match="method 'loka' takes a LokaConfig, got TaskVectorConfig"):
        method_config("loka", TaskVectorConfig())


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: GradientAscentConfig(alpha=2), "alpha must be a number between 0.0 and 1.0"),
        (lambda: GradientAscentConfig(batch_size=0), "batch_size must be an integer at least 1"),
        (lambda: TaskVectorConfig(scales=(1.0, -1.0)), "scales must be positive numbers"),
        (lambda: TaskVectorConfig(finetune_steps=0), "finetune_steps must be an integer at least 1"),
        (lambda: LokaConfig(edit="prune"), "edit must be one of 'finetune', 'ablate', 'rewrite', got 'prune'"),
        (lambda: LokaConfig(size=1.5), r"size must be a fraction in \(0, 1\] or a count between 1 and"),
        (lambda: LokaConfig(localize="middle"), "localize must be one of 'all', 'output', 'lookup', 'exact'"),
        (lambda: LokaConfig(components="neuron"), "components must be one of 'neurons', 'heads', 'all'"),
        (lambda: LokaConfig(contrast=1), "contrast must be True or False"),
        (lambda: LokaConfig(sizes=(0.1, 1)), r"sizes must be fractions in \(0, 1\]"),
        (lambda: LokaConfig(lams=()), "lams must be non-negative numbers"),
        (lambda: LokaConfig(lrs=(1e-2, 0.0)), "lrs must be distinct positive learning rates"),
        (lambda: LokaConfig(lrs=(1e-2, 1e-2)), "lrs must be distinct positive learning rates"),
        (lambda: LokaConfig(lr="auto", edit="ablate"), "lr='auto' chooses a fine-tuning rate; it works with edit="),
        (lambda: LokaConfig(lr="fast"), "lr must be"),
        (lambda: RetrainConfig(), "method 'retrain' needs oracle="),
    ],
)
def test_a_config_is_checked_when_it_is_built(build, message):
    with pytest.raises(UsageError, match=message):
        build()


def test_to_dict_records_every_option_as_json():
    config = LokaConfig(size=100, location_seed=3)
    record = config.to_dict()
    assert list(record) == list(LokaConfig.options())
    assert record["size"] == 100 and record["location_seed"] == 3 and record["sizes"] == list(config.sizes)
    assert LokaConfig(**json.loads(json.dumps(record))) == config  # the record rebuilds the config


@pytest.mark.parametrize(
    "cls,name,text,value",
    [
        (LokaConfig, "size", "100", 100),  # an integer is a count...
        (LokaConfig, "size", "0.02", 0.02),  # ...a float a fraction
        (LokaConfig, "size", "auto", "auto"),
        (LokaConfig, "contrast", "false", False),
        (LokaConfig, "location_seed", "none", None),
        (LokaConfig, "location_seed", "7", 7),
        (LokaConfig, "sizes", "0.01,0.02", (0.01, 0.02)),
        (LokaConfig, "lr", "auto", "auto"),
        (LokaConfig, "lr", "0.03", 0.03),
        (LokaConfig, "lrs", "0.003,0.03", (0.003, 0.03)),
        (LokaConfig, "lams", "[1, 0.5]", (1.0, 0.5)),
        (LokaConfig, "location", "random", "random"),
        (GradientAscentConfig, "lr", "1e-4", 1e-4),
        (GradientAscentConfig, "lr", "1", 1.0),
        (TaskVectorConfig, "finetune_steps", "5", 5),
        (RetrainConfig, "oracle", "./oracle", "./oracle"),
    ],
)
def test_option_text_is_read_by_the_options_type(cls, name, text, value):
    parsed = cls.parse(name, text)
    assert parsed == value and type(parsed) is type(value)


def test_option_text_that_does_not_fit_is_a_usage_error():
    with pytest.raises(UsageError, match="option size='lots' for 'loka': expected a number or an integer or 'auto'"):
        LokaConfig.parse("size", "lots")
    with pytest.raises(UsageError, match="option batch_size='1.5' for 'gradient_ascent': expected an integer"):
        GradientAscentConfig.parse("batch_size", "1.5")
    with pytest.raises(UsageError, match="unknown option for 'task_vector': 'scale'; options are finetune_steps"):
        TaskVectorConfig.parse("scale", "2")


def test_every_method_has_a_config():
    assert set(CONFIGS) == set(loka.methods.METHODS)
    assert all(CONFIGS[name].method == name for name in CONFIGS)
