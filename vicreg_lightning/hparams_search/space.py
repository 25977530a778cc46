"""The search space in Hydra's sweep grammar, as Optuna distributions.

``key: choice(a, b)`` (or ``a,b``) is categorical, ``range(start, stop[, step])`` a stepped int or
float (``stop`` excluded, as Hydra's), ``interval(low, high)`` a float, and ``tag(log, ...)`` of a
range or an interval samples on a log scale. Any other value is a fixed override, passed to every
trial. The same grammar on the command line (``loss.sim_coeff=choice(10,25)``) replaces the
config's entry for that key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from vicreg_lightning.errors import ConfigError


@dataclass(frozen=True)
class SearchSpace:
    """The swept keys with their distributions, and the overrides every trial gets."""

    params: dict[str, BaseDistribution]
    fixed: list[str]

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """A trial's command line: the fixed overrides, then ``key=value`` for each parameter."""
        return [*self.fixed, *(f"{key}={values[key]}" for key in self.params)]

    def signature(self) -> dict[str, str]:
        """The space as JSON strings, to be stored with a study and compared on resume."""
        return {key: distribution_to_json(dist) for key, dist in sorted(self.params.items())}


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (``choice``, ``range``, ``interval``)."""
    sweep, key = override.value(), override.key_or_group
    log = "log" in getattr(sweep, "tags", ())
    if isinstance(sweep, ChoiceSweep):
        if log:
            raise ConfigError(f"{key}: tag(log, ...) applies to range() and interval(), not to choice()")
        choices = list(override.sweep_iterator())
        if not all(value is None or isinstance(value, (bool, int, float, str)) for value in choices):
            raise ConfigError(f"{key}={override.input_line}: choices must be numbers, strings, booleans or null")
        return CategoricalDistribution(choices)
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{key}={override.input_line}: an empty range; give start < stop")
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            return IntDistribution(values[0], values[-1], log=log, step=1 if log else sweep.step)
        return FloatDistribution(float(values[0]), float(values[-1]), log=log, step=None if log else sweep.step)
    if isinstance(sweep, IntervalSweep):
        if not sweep.start < sweep.end or (log and sweep.start <= 0):
            raise ConfigError(f"{key}={override.input_line}: interval(low, high) needs low < high (and low > 0 "
                              "with tag(log, ...))")
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    raise ConfigError(f"{key}={override.input_line}: not a search dimension; use choice, range or interval")


def _parse(lines: Iterable[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(list(lines))


def parse_space(params: Mapping[str, Any] | None, arguments: Iterable[str]) -> SearchSpace:
    """The space of ``hydra.sweeper.params`` (``{key: "interval(5, 50)", ...}``) with the
    command line's ``arguments`` applied: a sweep there adds or replaces a dimension, a plain
    ``key=value`` fixes the key (and drops it from the space)."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    config_lines = [f"{key}={value}" for key, value in (params or {}).items()]
    for override in [*_parse(config_lines), *_parse(arguments)]:
        key = override.key_or_group
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = override.input_line
    if not space:
        raise ConfigError("the search space is empty; set hydra.sweeper.params (e.g. loss.sim_coeff: "
                          "tag(log, interval(5, 50)))")
    return SearchSpace(space, list(fixed.values()))
