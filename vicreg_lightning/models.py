"""Backbones (torchvision ResNets) and the VICReg expander."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from vicreg_lightning.errors import ConfigError

# The ResNet-family constructors of torchvision.models (tests/test_models.py checks this against
# torchvision.models.list_models). Listed here so that the config check needs no torchvision
# import, which takes seconds.
TORCHVISION_RESNETS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)
# ResNet-10 (one BasicBlock per stage) is torchvision's ResNet class at the smallest depth: a
# third of ResNet-18's cost, for quick runs on a CPU (the default digits run). Its weights load
# into ``torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1])``.
SMALL_RESNETS = {"resnet10": [1, 1, 1, 1]}


def resnet_names() -> list[str]:
    """The backbones ``model.backbone`` accepts."""
    return sorted([*TORCHVISION_RESNETS, *SMALL_RESNETS])


def build_backbone(
    name: str, small_stem: bool = False, zero_init_residual: bool = True
) -> tuple[nn.Module, int]:
    """A randomly initialised torchvision ResNet without its classifier, and its feature width.

    ``zero_init_residual`` starts each residual branch's last BN at zero, as the official code.
    ``small_stem`` swaps the 7×7/2 convolution and max-pool for a 3×3/1 convolution, the usual stem
    for 32-px (CIFAR-size) and smaller images, which would otherwise shrink to 1 px by layer 3.
    """
    import torchvision
    from torchvision.models.resnet import BasicBlock, ResNet

    names = resnet_names()
    if name not in names:
        raise ConfigError(f"model.backbone={name!r} is not a torchvision ResNet; choose one of: {', '.join(names)}")
    if name in SMALL_RESNETS:
        net = ResNet(BasicBlock, SMALL_RESNETS[name], zero_init_residual=zero_init_residual)
    else:
        net = torchvision.models.get_model(name, weights=None, zero_init_residual=zero_init_residual)
    if small_stem:
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim


def parse_expander_spec(spec: str | int) -> list[int]:
    """``"8192-8192-8192"`` → ``[8192, 8192, 8192]`` (layer output widths)."""
    parts = str(spec).split("-")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(
            f"model.expander={spec!r}: expected dash-separated positive integers, e.g. 8192-8192-8192"
        )
    return [int(p) for p in parts]


# At or below this crop size the ImageNet stem (7x7/2 conv + max-pool) would shrink the image to
# a few pixels before layer 1, so the backbone uses a 3x3/1 stem unless told otherwise.
SMALL_IMAGE_SIZE = 64


def uses_small_stem(small_stem: bool | None, image_size: int) -> bool:
    """``model.small_stem``, or when it is null the choice for ``augment.size``."""
    return image_size <= SMALL_IMAGE_SIZE if small_stem is None else small_stem


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
