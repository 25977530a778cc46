"""``python -m vicreg_lightning.export``: weights that torchvision loads as they are, a sidecar that
says what they are, and one line for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

import vicreg_lightning
from tests import warm
from tests.runs import ROOT
from vicreg_lightning.errors import UserError
from vicreg_lightning.cli import export as export_command
from vicreg_lightning.export import export, load_encoder
from vicreg_lightning.backbones import build_resnet


def export_cli(*args: str) -> subprocess.CompletedProcess:
    return warm.run([sys.executable, "-m", "vicreg_lightning.export", *args], timeout=300, cwd=ROOT)


def assert_one_error_line(returncode: int, stderr: str, message: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert "Traceback" not in stderr


def torchvision_resnet(arch: str, small_stem: bool) -> nn.Module:
    """What docs/evaluate.md tells a user to write, without this package."""
    model = ResNet(BasicBlock, [1, 1, 1, 1]) if arch == "resnet10" else getattr(torchvision.models, arch)()
    model.fc = nn.Identity()
    if small_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def checkpoint_backbone(checkpoint: Path, arch: str, small_stem: bool) -> nn.Module:
    """The backbone as training held it, read straight from the Lightning checkpoint."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    backbone = build_resnet(arch, small_stem=small_stem)
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")})
    return backbone.eval()


@pytest.mark.parametrize("run,arch,small_stem,feature_dim", [
    ("tiny_digits_run", "resnet10", False, 512),
    ("tiny_resnet18_run", "resnet18", True, 512),
])
def test_export_loads_into_torchvision_with_the_same_features(request, tmp_path, capsys, run, arch, small_stem,
                                                             feature_dim):
    run_dir: Path = request.getfixturevalue(run)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "export"
    export_command([str(checkpoint), str(out)])  # python -m vicreg_lightning.export <checkpoint> <out dir>, in-process
    assert f"Exported {arch}" in capsys.readouterr().out

    model = torchvision_resnet(arch, small_stem)
    model.load_state_dict(torch.load(out / "backbone.pt", weights_only=True), strict=True)
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = checkpoint_backbone(checkpoint, arch, small_stem)(images)
        assert torch.allclose(model.eval()(images), expected, atol=1e-5)
        backbone, expander, _ = load_encoder(out)
        assert torch.allclose(backbone(images), expected, atol=1e-5)
        assert expander(backbone(images)).shape == (4, 64)

    info = json.loads((out / "vicreg.json").read_text())
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert {k: info[k] for k in ("arch", "small_stem", "feature_dim", "expander", "embedding_dim")} == {
        "arch": arch, "small_stem": small_stem, "feature_dim": feature_dim, "expander": "64-64", "embedding_dim": 64}
    run_config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert info["data"]["name"] == "digits" and info["augment"] == OmegaConf.to_container(run_config.augment)
    assert info["loss"]["sim_coeff"] == 25.0 and info["loss"]["std_coeff"] == 25.0 and info["loss"]["cov_coeff"] == 1.0
    assert (info["epoch"], info["global_step"], info["max_epochs"]) == (saved["epoch"], saved["global_step"], 1)
    assert info["metrics"] == run_metrics and "val/probe_acc1" in info["metrics"]
    assert info["code_version"]["package"] == vicreg_lightning.__version__
    commit = info["code_version"]["git_commit"]
    assert commit is None or len(commit) == 40


def test_load_encoder_reads_checkpoint_run_dir_and_export_alike(tiny_digits_run, tmp_path):
    export(tiny_digits_run, tmp_path / "export")
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = [load_encoder(p)[0](images) for p in
                    (tiny_digits_run, tiny_digits_run / "checkpoints" / "last.ckpt", tmp_path / "export")]
    assert torch.equal(features[0], features[1]) and torch.equal(features[0], features[2])
    with pytest.raises(UserError, match="holds a resnet10 backbone .ImageNet stem., not the arch=resnet50"):
        load_encoder(tmp_path / "export", arch="resnet50")
    with pytest.raises(UserError, match="already holds an export"):
        export(tiny_digits_run, tmp_path / "export")


def _mismatched_export(source_run: Path, folder: Path) -> Path:
    """An export whose sidecar names another architecture than its weights."""
    export(source_run, folder)
    info = json.loads((folder / "vicreg.json").read_text())
    (folder / "vicreg.json").write_text(json.dumps(info | {"arch": "resnet18", "backbone": "resnet18"}))
    return folder


BAD_INPUT = [
    ("missing checkpoint", lambda run, tmp: tmp / "no_such.ckpt", "no_such.ckpt': no such file or folder"),
    ("corrupt checkpoint", lambda run, tmp: _write(tmp / "half.ckpt", b"half a checkpoint"),
     "half.ckpt': not a readable PyTorch file (corrupt or truncated)"),
    ("folder without backbone.pt", lambda run, tmp: _mkdir(tmp / "empty"), "empty': no backbone.pt in this folder"),
    ("weights of another architecture than the sidecar's", lambda run, tmp: _mismatched_export(run, tmp / "bad"),
     "backbone.pt': does not match resnet18 (ImageNet stem) of vicreg.json (layer1.1.bn1.bias: missing and"),
]


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("make,message", [(m, s) for _, m, s in BAD_INPUT], ids=[i for i, _, _ in BAD_INPUT])
def test_bad_input_gets_one_clear_line(tiny_digits_run, tmp_path, capsys, make, message):
    """The command (vicreg-export), in-process (the subprocess below shows it is the same as a user's)."""
    weights = make(tiny_digits_run, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        export_command([str(weights), str(tmp_path / "out")])
    assert_one_error_line(exit_info.value.code, capsys.readouterr().err, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["an existing file", "/proc"])
def test_an_output_folder_that_cannot_be_written_gets_one_clear_line(tiny_digits_run, tmp_path, capsys,
                                                                     where):
    if where == "/proc":
        out, message = Path("/proc/vicreg-export"), "cannot write the export there"
    else:
        out, message = _write(tmp_path / "taken", b"a file"), "is a file, not a folder"
    with pytest.raises(SystemExit) as exit_info:
        export_command([str(tiny_digits_run), str(out)])
    assert_one_error_line(exit_info.value.code, capsys.readouterr().err, message)
    assert where == "/proc" or out.read_bytes() == b"a file"


def test_an_export_never_replaces_a_file_it_did_not_write(tiny_digits_run, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    _write(out / "backbone.pt", b"the user's own weights")
    _write(out / "notes.txt", b"kept")
    with pytest.raises(SystemExit) as exit_info:
        export_command([str(tiny_digits_run), str(out)])
    assert_one_error_line(exit_info.value.code, capsys.readouterr().err,
                          "already holds backbone.pt, which the export would replace; choose a new folder")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"backbone.pt": b"the user's own weights",
                                                              "notes.txt": b"kept"}


def test_bad_input_as_a_user_runs_it(tmp_path):
    corrupt = _write(tmp_path / "half.ckpt", b"half a checkpoint")
    proc = export_cli(str(corrupt), str(tmp_path / "out"))
    assert_one_error_line(proc.returncode, proc.stderr + proc.stdout, "not a readable PyTorch file")


def test_export_folder_keeps_working_when_moved(tiny_digits_run, tmp_path):
    """An export is self-contained: no path back to the run is needed to load it."""
    export(tiny_digits_run, tmp_path / "export")
    shutil.move(tmp_path / "export", tmp_path / "moved")
    backbone, expander, info = load_encoder(tmp_path / "moved")
    assert info["arch"] == "resnet10" and expander is not None and not backbone.training
