"""The model and dataset names live in bench/names.py; the registries that build them agree."""

import subprocess
import sys

import pytest

from bench import data, models, names
from bench.config import ConfigError, RunConfig


def test_the_model_registry_has_exactly_the_named_models_in_order():
    assert tuple(models.MODELS) == names.MODELS
    assert set(names.IMAGE_MODELS).isdisjoint(names.SEQUENCE_MODELS)


def test_the_dataset_registry_has_exactly_the_named_datasets_in_order():
    assert tuple(data.DATASETS) == names.DATASETS == names.IMAGE_DATASETS + names.CHAR_DATASETS


@pytest.mark.parametrize("model", list(models.MODELS))
def test_config_accepts_each_registered_model_with_its_kind_of_data(model):
    sequence = model in names.SEQUENCE_MODELS
    config = RunConfig(model=model, dataset="pysrc" if sequence else "fashion-mnist")
    assert config.task == ("lm" if sequence else "classification")
    with pytest.raises(ConfigError, match="dataset"):  # and rejects the other kind
        RunConfig(model=model, dataset="fashion-mnist" if sequence else "pysrc")


def test_config_checks_names_without_importing_the_registries():
    """The reason names.py exists: config needs the names, not torch modules or data loaders."""
    code = ("import sys, bench.config; "
            "print(sorted(m for m in ('bench.models', 'bench.data') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
