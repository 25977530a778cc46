"""The VICReg expander: the MLP from the backbone's features to the embeddings that the loss
regularises (the features, not the embeddings, are the representation that is evaluated; backbones:
:mod:`vicreg_lightning.backbones`)."""

from __future__ import annotations

from torch import nn

from vicreg_lightning.choices import parse_expander_spec
from vicreg_lightning.errors import ConfigError
from vicreg_lightning.memory import available_memory


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
