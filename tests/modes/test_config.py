"""Every conf/mode and conf/precision yaml composes against its schema and builds its class."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from cpueval import plugins
from cpueval.config import register_configs

CONF = Path(__file__).resolve().parents[2] / "conf"
MODES = plugins.names("mode")
PRECISIONS = plugins.names("precision")


def compose_group(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("group", plugins.GROUPS)
def test_every_plugin_yaml_names_its_class_and_schema(group):
    for name in plugins.names(group):
        found = plugins.info(group, name)
        schema = found.load_schema()
        assert plugins.schema_default(schema, "_target_") == found.target, found.yaml_path
        assert plugins.schema_default(schema, "name") == name, found.yaml_path
        assert found.load_class().group == group


@pytest.mark.parametrize("name", MODES)
def test_mode_yaml_builds_its_class(name):
    cfg = compose_group([f"mode={name}"]).mode
    mode = get_class(cfg._target_)(OmegaConf.to_object(cfg))
    assert mode.name == name
    assert mode.config.fallback is None  # no fallback unless asked for


@pytest.mark.parametrize("name", PRECISIONS)
def test_precision_yaml_builds_its_class(name):
    cfg = compose_group([f"precision={name}"]).precision
    precision = get_class(cfg._target_)(OmegaConf.to_object(cfg))
    assert precision.name == name


def test_options_are_typed():
    cfg = compose_group(["mode=compile", "mode.dynamic=false", "mode.mode=max-autotune", "precision=int8",
                         "precision.backend=torchao"])
    assert cfg.mode.dynamic is False and cfg.mode.freezing is True and cfg.precision.backend == "torchao"
    with pytest.raises(Exception, match="freezing"):
        compose_group(["mode=compile", "mode.freezing=maybe"])


@pytest.mark.parametrize("override, valid", [
    ("precision=int8 precision.backend=fbgemm", "ao_dynamic, torchao, pt2e_static"),
    ("precision=int8 precision.weights=per_row", "per_channel, per_tensor"),
    ("precision=bf16 precision.weights=half", "autocast, cast"),
    ("task=token_classification task.scheme=BIO", "IOB1, IOB2"),
    ("task=token_classification task.mode=lenient", "default, strict"),
])
def test_choice_typos_fail_at_composition_naming_the_valid_values(override, valid):
    with pytest.raises(Exception) as failure:
        compose_group(override.split())
    assert f"Invalid value '{override.rpartition('=')[2]}', expected one of [{valid}]" in str(failure.value.__cause__)


def test_choices_compose_and_hash_as_plain_strings():
    from cpueval import identity

    cfg = compose_group(["precision=int8", "precision.backend=torchao"])
    assert identity.job_config(cfg)["precision"]["backend"] == "torchao"
