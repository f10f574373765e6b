"""``tgdpet models``: the built-in models, described by their own files' metadata."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import make_volume, rel_rms, trained_like_model, tree_snapshot, write_test_nifti

import tgdpet.builtin
from tgdpet.checkpoint import save_model
from tgdpet.cli import main
from tgdpet.builtin import pretrained_model_path, resolve_model
from tgdpet.io import read_volume
from tgdpet.models import build_model


def _metadata(path) -> dict:
    """The tgdpet JSON of a safetensors file, read by hand (8-byte length, JSON header)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(json.loads(f.read(n))["__metadata__"]["tgdpet"])


def test_models_lists_the_builtin_model_with_what_its_file_records():
    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    cards = json.loads(result.output)
    default = pretrained_model_path()
    assert default.stem in cards  # the model denoise uses without --model is listed
    card, meta = cards[default.stem], _metadata(default)
    prov = meta["provenance"]
    assert card["command"] == prov["recipe"]  # a shipped file names the recipe that made it
    # No path from the maker's machine, in the file or in what is shown (only where this installation keeps it).
    assert not re.search(r"(^|[\s'\"(=])/[A-Za-z]", json.dumps(prov)), prov
    assert not any(re.search(r"(^|\s)/[A-Za-z]", text) for field, text in card.items() if field != "file")
    assert card["use for"] == prov["use_for"]  # what it was measured to do, and not to do, shown to the user
    assert card["tracer"] == prov.get("tracer", "unknown")
    assert card["protocol"] == prov.get("protocol", "unknown")
    assert f"preset {meta['preset']}" in card["network"]
    counted = f"{len(prov['train_studies'])} training + {len(prov['val_studies'])} validation manifest entries"
    assert counted in card["training data"]
    text = CliRunner().invoke(main, ["models"]).output
    assert text.splitlines()[0] == default.stem and card["command"] in text


def test_every_field_comes_from_the_file_and_missing_ones_say_unknown(tmp_path, monkeypatch):
    torch.manual_seed(0)
    provenance = {
        "workflow": "train", "command": "tgdpet train /x --out run --config small", "tracer": "FDG",
        "config": {"epochs": 8},
        "protocol": "v1", "voxel_size_mm": [4, 4, 4.5], "training_data": "10 simulated studies",
        "data": "/x/manifest.json", "train_studies": ["a", "b", "c"], "val_studies": ["d"],
        "epochs": 5, "steps": 320, "patches_seen": 20480, "wall_time_s": 120.0, "device": "cpu",
        "selected_by": "val_loss", "val_loss": 0.0125,
    }  # fmt: skip
    save_model(tmp_path / "full.safetensors", build_model("tiny"), preset="tiny", provenance=provenance)
    save_model(tmp_path / "bare.safetensors", build_model("tiny"), preset="tiny", provenance={})
    monkeypatch.setattr(tgdpet.builtin, "PRETRAINED_DIR", tmp_path)
    cards = json.loads(CliRunner().invoke(main, ["models", "--json"]).output)
    assert list(cards) == ["bare", "full"]
    full, bare = cards["full"], cards["bare"]
    assert (full["tracer"], full["protocol"], full["voxel size"]) == ("FDG", "v1", "4 x 4 x 4.5 mm")
    # a shipped file does not show where its maker kept the data
    assert full["training data"] == "10 simulated studies; 3 training + 1 validation manifest entries"
    assert full["training"] == (
        "train: epoch 5 of 8, 320 steps, 20,480 patches, 2 min on cpu; this file is the epoch with "
        "the lowest val_loss (0.0125)"
    )
    assert full["command"] == "tgdpet train DATA --out run --config small"
    assert full["trained on"].startswith("voxels 4.5 x 4 x 4 mm (z x y x x") and "units BQML" in full["trained on"]
    n_params = sum(p.numel() for p in build_model("tiny").parameters())
    assert f"{n_params:,} parameters" in full["network"]
    for field in ("tracer", "protocol", "voxel size", "trained on", "training data", "command"):
        assert bare[field] == "unknown", field


# --------------------------------------------------------------------------- built-in models by name


@pytest.fixture
def two_builtins(tmp_path, monkeypatch):
    """An installation shipping two models: the default, and one ("a-first") that sorts before it by name."""
    shipped = tmp_path / "pretrained"
    shipped.mkdir()
    save_model(shipped / "default-net.safetensors", trained_like_model(seed=0), preset="tiny", provenance={})
    save_model(shipped / "a-first.safetensors", trained_like_model(seed=1), preset="tiny",
               provenance={"use_for": "fine-grained reconstructions"})  # fmt: skip
    monkeypatch.setattr(tgdpet.builtin, "PRETRAINED_DIR", shipped)
    monkeypatch.setattr(tgdpet.builtin, "DEFAULT_MODEL", "default-net.safetensors")
    return shipped


def test_models_lists_the_default_first_and_says_what_a_file_is_for(two_builtins):
    cards = json.loads(CliRunner().invoke(main, ["models", "--json"]).output)
    assert list(cards) == ["default-net", "a-first"]  # by name the other would come first
    assert cards["a-first"]["use for"] == "fine-grained reconstructions"
    assert "use for" not in cards["default-net"]  # nothing recorded, nothing shown


def test_a_builtin_model_is_named_by_its_stem_and_a_file_of_that_name_wins(two_builtins, tmp_path, monkeypatch):
    assert resolve_model("a-first") == two_builtins / "a-first.safetensors"
    assert resolve_model("a-first.safetensors") == two_builtins / "a-first.safetensors"
    assert resolve_model(None) == two_builtins / "default-net.safetensors"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-first").write_bytes(b"a model of one's own")
    assert resolve_model("a-first") == Path("a-first")  # never shadowed by a built-in name
    assert resolve_model("runs/missing.safetensors") == Path("runs/missing.safetensors")  # a path: load_model says


def test_denoise_with_a_builtin_name_uses_that_file(two_builtins, tmp_path):
    path = write_test_nifti(tmp_path / "study.nii.gz", make_volume(shape=(6, 14, 12)))
    outputs = {}
    for model in ("a-first", str(two_builtins / "a-first.safetensors"), None):
        out = tmp_path / f"out-{len(outputs)}.nii.gz"
        args = ["denoise", str(path), "-o", str(out), "--device", "cpu", "--precision", "fp32", "--no-progress"]
        result = CliRunner().invoke(main, args + (["--model", model] if model else []))
        assert result.exit_code == 0, result.output
        outputs[model] = read_volume(out).data
    by_name, by_path, default = outputs.values()
    np.testing.assert_array_equal(by_name, by_path)
    assert rel_rms(by_name, default) > 1e-3  # another network: the name did not fall back to the default


def test_an_unknown_model_name_is_one_sentence_naming_the_builtins(two_builtins, tmp_path):
    path = write_test_nifti(tmp_path / "study.nii.gz", make_volume(shape=(6, 14, 12)))
    before = tree_snapshot(tmp_path)
    for args in (["denoise", str(path), "--model", "sharp"], ["tgd-finetune", "sharp", str(tmp_path), "--out", "r"],
                 ["evaluate", str(tmp_path), "--model", "x=sharp"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, args
        message = result.stderr.strip()
        assert len(message.splitlines()) == 1 and "Traceback" not in message, message
        assert "model 'sharp' is neither a file nor a built-in model's name (default-net, a-first;" in message
    assert tree_snapshot(tmp_path) == before  # nothing written
