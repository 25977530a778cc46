"""Bad overrides are told in one line, in-process (the same through ``train.py``:
tests/integration/test_cli.py)."""

from __future__ import annotations

import pytest

from tests.runs import compose_train
from vicreg_lightning.error_exit import describe_error


def test_bad_overrides_are_described_in_one_line_in_process():
    """What Hydra raises for an override of the wrong type names the key (the line train.py prints)."""
    with pytest.raises(Exception) as error:
        compose_train("loss.sim_coeff=abc", "paths.output_dir=x")
    assert describe_error(error.value).startswith("loss.sim_coeff: Value 'abc' of type 'str' could not be converted")
    with pytest.raises(Exception) as error:
        compose_train("model=nonexistent", "paths.output_dir=x")
    assert describe_error(error.value) == ("model=nonexistent: no such option; choose one of: convnext_tiny, "
                                           "convnext_tiny_32, digits, resnet18, resnet50, vit_small, vit_small_32, "
                                           "vit_tiny, vit_tiny_32")
