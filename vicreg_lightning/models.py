"""The VICReg expander, and comparing saved weights with a model's (backbones: :mod:`vicreg_lightning.backbones`)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from vicreg_lightning.errors import ConfigError


def parse_expander_spec(spec: str | int) -> list[int]:
    """``"8192-8192-8192"`` → ``[8192, 8192, 8192]`` (layer output widths)."""
    parts = str(spec).split("-")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(
            f"model.expander={spec!r}: expected dash-separated positive integers, e.g. 8192-8192-8192"
        )
    return [int(p) for p in parts]


def build_expander(input_dim: int, spec: str | int) -> nn.Sequential:
    """The official expander: (Linear-BN-ReLU) for every width but the last, then a Linear
    without bias, BN or ReLU, so the embedding is unnormalised (paper §4.2, official code)."""
    widths = [input_dim, *parse_expander_spec(spec)]
    weights = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    # Float32 weights, their gradients and the optimiser's momentum, before anything is allocated.
    needed, available = weights * 4 * 3, available_memory()
    if available is not None and needed > available:
        raise ConfigError(_too_wide(spec, weights, f"{available / 2**30:.1f} GiB available"))
    layers: list[nn.Module] = []
    try:
        for in_dim, out_dim in zip(widths[:-2], widths[1:-1], strict=True):
            layers += [nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-2], widths[-1], bias=False))
    except RuntimeError as e:  # the allocator's "can't allocate memory" (torch.OutOfMemoryError included)
        raise ConfigError(_too_wide(spec, weights, str(e).splitlines()[0][:80])) from None
    return nn.Sequential(*layers)


def _too_wide(spec: str | int, weights: int, why: str) -> str:
    return (f"model.expander={spec!r}: its {weights / 1e6:,.0f} M weights need {weights * 12 / 2**30:.1f} GiB to train "
            f"(float32 weights, gradients and momentum), more than this machine has ({why}); use narrower layers")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation on this machine (Linux's MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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
