"""The method table (``visalign.trainers.methods``): one flat config per trainer family, every ``method:`` name
checked the same way, the named configs (``MaPOConfig`` ...) only names."""

from __future__ import annotations

import dataclasses

import pytest

from visalign.cli.train import import_object
from visalign.trainers.config import PreferenceConfig, TrainingConfig
from visalign.trainers.diffusion import DCPOConfig, DiffusionConfig, InPOConfig, MaPOConfig
from visalign.trainers.methods import METHODS, TRAINERS, resolve_method, trainer_methods
from visalign.trainers.onpolicy import OnPolicyConfig
from visalign.trainers.spo import SPOConfig
from visalign.trainers.text import DPOConfig, KTOConfig
from visalign.trainers.vlm import VLMDPOConfig

NAMED = {KTOConfig: (DPOConfig, "kto"), MaPOConfig: (DiffusionConfig, "mapo"), DCPOConfig: (DiffusionConfig, "dcpo"),
         InPOConfig: (DiffusionConfig, "inpo"), SPOConfig: (OnPolicyConfig, "spo")}


def family_configs() -> list[type]:
    return [import_object(spec.config) for spec in TRAINERS.values()]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_builds_its_trainer_familys_config_with_its_defaults(name):
    method = METHODS[name]
    config_cls = import_object(method.config)
    assert config_cls.TRAINER == method.trainer and callable(import_object(method.run))
    config = config_cls(method=name, model="m")
    for key, value in method.defaults.items():
        assert getattr(config, key) == value, key
    for requirement in method.requires:
        assert requirement.holds(getattr(config, requirement.key)), requirement.key


def test_each_config_is_at_most_two_classes_below_training_config_and_none_is_generated():
    for cls in family_configs():
        chain = cls.__mro__[: cls.__mro__.index(TrainingConfig)]
        assert len(chain) <= 3, chain  # family config [-> its token/diffusion base] -> PreferenceConfig
        for base in chain:
            assert not base.__name__.startswith("_") and base.__module__.startswith("visalign."), base
            assert "TRAINER" not in {f.name for f in dataclasses.fields(base)}  # a ClassVar, never a field


@pytest.mark.parametrize("named", list(NAMED), ids=lambda c: c.__name__)
def test_a_named_config_is_its_family_config_with_the_method_set_and_nothing_else(named):
    base, method = NAMED[named]
    assert {key for key in vars(named) if not key.startswith("__")} == {"method"}  # no checks, no properties
    assert set(named.__annotations__) == {"method"} and "__post_init__" not in vars(named)
    assert [f.name for f in dataclasses.fields(named)] == [f.name for f in dataclasses.fields(base)]
    values = dict(model="m", seed=3)
    assert dataclasses.asdict(named(**values)) == dataclasses.asdict(base(method=method, **values))


def test_a_method_default_fills_only_what_is_left_unset():
    assert DiffusionConfig(method="mapo").beta == 0.1 and DiffusionConfig(method="mapo", beta=2.0).beta == 2.0
    assert DiffusionConfig().caption_dropout == 0.2 and DiffusionConfig(method="dcpo").caption_dropout == 0.0
    assert DiffusionConfig(method="dcpo", caption_dropout=0.1).caption_dropout == 0.1
    assert OnPolicyConfig(model="m").max_steps == -1 and OnPolicyConfig(model="m", method="spo").max_steps == 500


@pytest.mark.parametrize("config_cls, values, message", [
    (DiffusionConfig, dict(method="spo"), r"DiffusionConfig.method must be one of diffusion-dpo, mapo, dcpo, inpo; "
                                          r"got 'spo' \(method 'spo' is trained with .*OnPolicyConfig\)"),
    (DPOConfig, dict(method="dense-dpo"), r"DPOConfig.method must be one of dpo, kto; got 'dense-dpo'"),
    (VLMDPOConfig, dict(method="vlm-dpo", dense_dpo_gamma=5.0),
     r"VLMDPOConfig.dense_dpo_gamma is read by method dense-dpo only; method is 'vlm-dpo'"),
    (OnPolicyConfig, dict(model="m", num_candidates=2),
     r"OnPolicyConfig.num_candidates is read by method spo only; method is 'onpolicy-diffusion-dpo'"),
    (OnPolicyConfig, dict(model="m", method="spo", samples_per_prompt=8),
     r"OnPolicyConfig.samples_per_prompt is read by method onpolicy-diffusion-dpo only; method is 'spo'"),
    (DPOConfig, dict(method="kto", per_device_batch_size=1),
     r"DPOConfig.per_device_batch_size must be >= 2 .* for method 'kto'; got 1"),
    (OnPolicyConfig, dict(model="m", method="spo", resample_every=0),
     r"OnPolicyConfig.resample_every must be >= 1 \(SPO draws a round of pairs every few steps\) for method 'spo'"),
])
def test_every_family_checks_its_methods_the_same_way(config_cls, values, message):
    with pytest.raises(ValueError, match=message):
        config_cls(**values)


def test_every_method_belongs_to_exactly_one_trainer_family_and_its_requirements_are_checked():
    assert sorted(name for trainer in TRAINERS for name in trainer_methods(trainer)) == sorted(METHODS)
    for name, method in METHODS.items():  # check_requirements runs in PreferenceConfig.__post_init__
        assert not method.requires or issubclass(import_object(method.config), PreferenceConfig), name


def test_a_config_outside_every_family_takes_any_method_and_must_then_set_its_loss():
    assert resolve_method(TrainingConfig(method="toy")) is None
    assert PreferenceConfig(method="dpo").loss_type == "sigmoid"
    with pytest.raises(ValueError, match=r"PreferenceConfig.loss_type must be set: method 'toy' has no default"):
        PreferenceConfig(method="toy")


def test_help_lists_the_options_the_recipes_method_reads(capsys):
    from visalign.cli.train import main

    shown = {}
    for recipe in ("quickstart", "spo-shapes"):
        assert main(["--config", recipe, "--help"]) == 0
        shown[recipe] = capsys.readouterr().out
    assert "--samples_per_prompt" in shown["quickstart"] and "--num_candidates" not in shown["quickstart"]
    assert "--num_candidates" in shown["spo-shapes"] and "--samples_per_prompt" not in shown["spo-shapes"]


def test_saved_and_printed_configs_hold_only_the_options_the_method_reads():
    from visalign.config_io import config_to_dict

    onpolicy, spo = config_to_dict(OnPolicyConfig(model="m")), config_to_dict(OnPolicyConfig(model="m", method="spo"))
    assert "samples_per_prompt" in onpolicy and "num_candidates" not in onpolicy
    assert "num_candidates" in spo and "samples_per_prompt" not in spo
    assert OnPolicyConfig(**onpolicy) == OnPolicyConfig(model="m")  # what is left out is at its default
