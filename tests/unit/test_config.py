"""The config: one schema per group with no defaults of its own (the YAML holds every value), each
preset composed against its schema, and bad values refused in-process with one message naming the
key."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from omegaconf import MISSING, OmegaConf

import vicreg_lightning.config.schema
import vicreg_lightning.data.datasets as datasets
import vicreg_lightning.evaluate.config
import vicreg_lightning.report.config
from tests.runs import CONF, compose_train
from vicreg_lightning.config import check_config, check_recipe, check_sections, preset
from vicreg_lightning.data.catalog import DATASETS
from vicreg_lightning.errors import ConfigError
from vicreg_lightning.report.config import REPORT_YAML, report_options

BAD_VALUES = [
    (["loss.sim_coeff=-1"], "loss.sim_coeff=-1.0: expected a finite coefficient >= 0"),
    (["data.batch_size=1"], "data.batch_size=1: expected an integer >= 2"),
    (["model.expander=8192-abc"], "model.expander='8192-abc'"),
    (["model.backbone=resnet999"], "model.backbone='resnet999': expected a torchvision ResNet"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: expected an integer >= 1"),
    (["optim.name=unknown"], "optim.name='unknown': expected one of"),
    (["+loss.sim_coef=5"], "unknown config key 'loss.sim_coef'; valid keys in 'loss': sim_coeff"),
    (["optim.warmup_epochs=30"], "optim.warmup_epochs=30.0: expected at most trainer.max_epochs (20)"),
    (["seed=-1"], "seed=-1: expected null or an integer in [0, 2**32 - 1]"),
    (["seed=4294967296"], "seed=4294967296"),
    (["augment.crop_ratio=[1,inf]"], "augment.crop_ratio=[1.0, inf]: expected [min, max] with 1e-06 <= min <= max, both finite"),
    (["augment.blur_sigma=[0.1,inf]"], "augment.blur_sigma=[0.1, inf]"),
    (["loss.sim_coeff=inf"], "loss.sim_coeff=inf: expected a finite coefficient >= 0"),
    (["loss.cov_coeff=1e400"], "loss.cov_coeff=inf"),
    (["optim.base_lr=nan"], "optim.base_lr=nan: expected a finite learning rate > 0"),
    # Every augmentation value a real number can break: infinite jitter, NaN mean, infinite or zero std.
    (["augment.brightness=inf"], "augment.brightness=inf: expected a finite jitter strength >= 0"),
    (["augment.saturation=nan"], "augment.saturation=nan: expected a finite jitter strength >= 0"),
    (["augment.mean=[0.5,nan,0.5]"], "augment.mean=[0.5, nan, 0.5]: expected 3 finite per-channel values"),
    (["augment.std=[0.2,inf,0.2]"], "augment.std=[0.2, inf, 0.2]: expected 3 finite positive per-channel values"),
    (["augment.std=[0.2,0,0.2]"], "augment.std=[0.2, 0.0, 0.2]: expected 3 finite positive"),
]


@pytest.mark.parametrize("overrides,message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_values_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        check_config(compose_train(*overrides, "paths.output_dir=unused"))
    assert message in str(error.value)


def test_the_edges_of_the_accepted_ranges_pass():
    check_config(compose_train("optim.warmup_epochs=20", "seed=4294967295", "augment.crop_ratio=[0.5,2]",
                               "loss.cov_coeff=0", "paths.output_dir=unused"))


def _schemas() -> list[type]:
    """Every dataclass of the modules that hold schemas: a new one is walked without being listed."""
    modules = (vicreg_lightning.config.schema, vicreg_lightning.evaluate.config, vicreg_lightning.report.config)
    return [cls for module in modules for _, cls in inspect.getmembers(module, dataclasses.is_dataclass)
            if cls.__module__ == module.__name__]


def _fields_with_values(schemas: list[type]) -> list[str]:
    return [f"{cls.__name__}.{f.name}" for cls in schemas for f in dataclasses.fields(cls)
            if f.default is not MISSING or f.default_factory is not dataclasses.MISSING]


def test_no_schema_field_carries_a_value_of_its_own():
    """The YAML under conf/ is the only place a default is written."""
    schemas = _schemas()
    assert len(schemas) >= 14  # train's 8, eval's 5, the report's 1: the walk finds them
    assert _fields_with_values(schemas) == []


def test_the_walk_finds_a_default():
    """Negative control: a value, or a factory of one, is found."""

    @dataclasses.dataclass
    class WithDefaults:
        lr: float = 0.1
        name: str = MISSING
        betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])

    assert _fields_with_values([WithDefaults]) == ["WithDefaults.lr", "WithDefaults.betas"]


def _group_options(group: str) -> list[str]:

    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def test_a_preset_missing_a_key_names_it():

    data = preset("data", "cifar10")
    del data["bad_images"]
    with pytest.raises(ConfigError, match=r"^data.bad_images: no value \(\?\?\?\); set data.bad_images=<value>"):
        check_sections(data=data)
    with pytest.raises(ConfigError, match="^unknown config key 'data.batch_sise'; valid keys in 'data': name, root"):
        check_sections(data={**preset("data", "cifar10"), "batch_sise": 3})


def test_the_registry_and_the_data_presets_agree():
    """A data set is one registry entry (with its builder) plus one preset of the same name."""
    presets = {preset("data", option)["name"]: option for option in _group_options("data")}
    assert presets == {name: name for name in DATASETS}
    assert all(callable(getattr(datasets, entry.builder)) for entry in DATASETS.values())


def test_the_default_recipe_is_experiment_digits_and_refuses_other_data():

    default, explicit = compose_train("paths.output_dir=x"), compose_train("experiment=digits", "paths.output_dir=x")
    assert default == explicit
    assert (default.data.name, default.model.backbone, default.optim.base_lr, default.trainer.max_epochs) == (
        "digits", "resnet10", 3.2, 20)
    check_recipe({"experiment": "digits", "data": "digits"})
    check_recipe({"experiment": None, "data": "cifar10"})
    with pytest.raises(ConfigError, match=r"^data=cifar10 under experiment=digits .*'~experiment'"):
        check_recipe({"experiment": "digits", "data": "cifar10"})
    generic = compose_train("~experiment", "data=cifar10", "paths.output_dir=x")
    assert (generic.model.backbone, generic.optim.base_lr, generic.trainer.max_epochs) == ("resnet18", 0.3, 100)


def test_report_options_come_from_their_yaml_and_are_checked():


    assert OmegaConf.to_container(report_options()) == OmegaConf.to_container(OmegaConf.load(REPORT_YAML))
    assert report_options(batch_size=8).batch_size == 8
    with pytest.raises(ConfigError, match=r"^--batch-size=1: expected an integer >= 2"):
        report_options(batch_size=1)
    with pytest.raises(ConfigError, match="^unknown config key 'batch_sise'"):
        report_options(batch_sise=8)
