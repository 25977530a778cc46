"""Saved weights against a model's: what a loader says when a state dict does not fit (an init
checkpoint, an export, a resumed checkpoint), instead of the wall of keys ``load_state_dict`` prints."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def weight_mismatches(expected: Mapping[str, Tensor], saved: Mapping[str, Tensor]) -> list[str]:
    """How a saved state_dict differs from a model's, one line per weight: shapes first (they say
    most about which setting differs), then missing, then unexpected names."""
    expected_shapes = {name: tuple(t.shape) for name, t in expected.items()}
    saved_shapes = {name: tuple(t.shape) for name, t in saved.items() if isinstance(t, Tensor)}
    mismatches = [
        f"{name}: {saved_shapes[name]} saved, {expected_shapes[name]} expected"
        for name in sorted(saved_shapes.keys() & expected_shapes.keys())
        if saved_shapes[name] != expected_shapes[name]
    ]
    mismatches += [f"{name}: missing" for name in sorted(expected_shapes.keys() - saved.keys())]
    mismatches += [f"{name}: unexpected" for name in sorted(saved.keys() - expected_shapes.keys())]
    return mismatches
