"""Every setting has one definition (issue 21): the trainer's flags are made from the RunConfig sections' fields
(and LossConfig's), so each flag's default, type, bounds, choices and help are its field's (the temperature's
default: the trainer's loss, run_config.TRAINER_LOSS)."""

import dataclasses
import typing
from typing import Optional

import pytest
from absl import flags

from trainers import run_config, train_flags
from trainers.run_config import RunConfig

# Flags that are no setting of a run: where it is written.
FLAG_ONLY = ("model_dir",)
# The absl parser each kind of setting's flag must have.
PARSERS = {bool: flags.BooleanParser, int: flags.IntegerParser, float: flags.FloatParser,
           Optional[float]: flags.FloatParser, str: flags.ArgumentParser}


def _setting_fields():
    """(field, type) of every setting: RunConfig.seed and each section's fields (LossConfig's seed is the run's)."""
    found = [(field, typing.get_type_hints(RunConfig)[field.name])
             for field in dataclasses.fields(RunConfig) if field.name == "seed"]
    for section_class in run_config.SECTIONS.values():
        types = typing.get_type_hints(section_class)
        found += [(field, types[field.name]) for field in dataclasses.fields(section_class)
                  if field.name in run_config.section_fields(section_class)]
    return found


def _flag_values(*argv):
    flag_values = flags.FlagValues()
    train_flags.define_flags(flag_values)
    flag_values(["trainers.train", *argv])
    return flag_values


@pytest.fixture(scope="module")
def defined():
    return _flag_values()


def _expected_parser(field, setting_type):
    if "choices" in field.metadata:
        return flags.EnumParser
    if typing.get_origin(setting_type) is tuple:
        return flags.ListParser
    return PARSERS[setting_type]


@pytest.mark.parametrize("field, setting_type", _setting_fields(), ids=lambda value: getattr(value, "name", ""))
def test_each_flag_is_its_field(defined, field, setting_type):
    flag = defined[field.name]
    assert type(flag.parser) is _expected_parser(field, setting_type)
    default = field.default if field.name != "temperature" else run_config.TRAINER_LOSS.temperature
    expected_default = [str(item) for item in default] if isinstance(default, tuple) else default
    assert flag.default == expected_default and type(flag.default) is type(expected_default)
    for bound in ("lower_bound", "upper_bound"):
        assert getattr(flag.parser, bound, None) == field.metadata.get(bound), bound
    choices = field.metadata.get("choices")
    assert getattr(flag.parser, "enum_values", None) == (list(choices) if choices else None)
    prefix = f"<{'|'.join(choices)}>: " if choices else ""  # absl's own prefix of an enum flag's help
    assert flag.help == prefix + field.metadata["help"]


def test_every_flag_but_model_dir_is_a_setting(defined):
    ours = {name for name, flag in defined._flags().items()
            if name == flag.name and defined.find_module_defining_flag(name) == train_flags.__name__}
    settings = {field.name for field, _ in _setting_fields()}
    assert ours - settings == set(FLAG_ONLY)
    assert settings <= ours


def test_the_loss_takes_the_run_seed():
    assert RunConfig().loss.seed == RunConfig.seed
    assert RunConfig(seed=7).loss.seed == 7
    assert dataclasses.replace(RunConfig(), seed=3).loss.seed == 3


def test_no_flags_give_the_default_config():
    assert train_flags.config_from_flags(_flag_values()) == RunConfig()


def test_given_flags_reach_their_sections():
    config = train_flags.config_from_flags(
        _flag_values("--num_sampled=7", "--seed=5", "--hidden_dims=32,16", "--eval_top_k=5", "--strategy=default"))
    assert config.loss.num_sampled == 7 and config.seed == config.loss.seed == 5
    assert config.model.hidden_dims == (32, 16) and config.evaluation.eval_top_k == (5,)
    assert config.distribution.strategy == "default" and config.model.query_features == ("history",)


def test_special_checks_still_hold():
    for argv in (["--label_smoothing=1"], ["--temperature=0"]):
        with pytest.raises(flags.IllegalFlagValueError):
            _flag_values(*argv)
    with pytest.raises(run_config.ConfigError, match="--logged_negative_weight=inf"):
        train_flags.config_from_flags(_flag_values("--logged_negative_weight=inf"))
