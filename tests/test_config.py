"""Bad values are refused by the schema check, in-process, with one message naming the key."""

from __future__ import annotations

import pytest

from tests.runs import compose_train
from vicreg_lightning.config import check_config
from vicreg_lightning.errors import ConfigError

BAD_VALUES = [
    (["optim.warmup_epochs=30"], "optim.warmup_epochs=30.0: expected at most trainer.max_epochs (20)"),
    (["seed=-1"], "seed=-1: expected null or an integer in [0, 2**32 - 1]"),
    (["seed=4294967296"], "seed=4294967296"),
    (["augment.crop_ratio=[1,inf]"], "augment.crop_ratio=[1.0, inf]: expected [min, max] with 1e-06 <= min <= max, both finite"),
    (["augment.blur_sigma=[0.1,inf]"], "augment.blur_sigma=[0.1, inf]"),
    (["loss.sim_coeff=inf"], "loss.sim_coeff=inf: expected a finite coefficient >= 0"),
    (["loss.cov_coeff=1e400"], "loss.cov_coeff=inf"),
    (["optim.base_lr=nan"], "optim.base_lr=nan: expected a finite learning rate > 0"),
]


@pytest.mark.parametrize("overrides,message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_values_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        check_config(compose_train(*overrides, "paths.output_dir=unused"))
    assert message in str(error.value)


def test_the_edges_of_the_accepted_ranges_pass():
    check_config(compose_train("optim.warmup_epochs=20", "seed=4294967295", "augment.crop_ratio=[0.5,2]",
                               "loss.cov_coeff=0", "paths.output_dir=unused"))
