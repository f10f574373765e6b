"""``tgdpet models``: the built-in models, described by their own files' metadata."""

from __future__ import annotations

import json
import re
import struct

import torch
from click.testing import CliRunner

import tgdpet.builtin
from tgdpet.checkpoint import save_model
from tgdpet.cli import main
from tgdpet.builtin import pretrained_model_path
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
    assert card["tracer"] == prov.get("tracer", "unknown")
    assert card["protocol"] == prov.get("protocol", "unknown")
    assert f"preset {meta['preset']}" in card["network"]
    counted = f"{len(prov['train_studies'])} training + {len(prov['val_studies'])} validation studies"
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
    assert full["training data"] == "10 simulated studies; 3 training + 1 validation studies"
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
