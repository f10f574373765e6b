"""Model files (safetensors + tgdpet metadata) and resumable training state."""

from __future__ import annotations

import json
import pickle
import random
import struct

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from tgdpet import __version__
from tgdpet.checkpoint import (
    capture_rng_state,
    load_model,
    load_training_state,
    restore_rng_state,
    save_model,
    save_training_state,
)
from tgdpet.inputs import NORMALIZATION
from tgdpet.errors import TgdpetError
from tgdpet.models import build_model
from tgdpet.tgd import build_masks


def _model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("tiny")
    with torch.no_grad():
        for bn in model.bns:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.num_batches_tracked.fill_(17)
    return model


@pytest.fixture
def saved(tmp_path):
    model = _model()
    path = tmp_path / "model.safetensors"
    save_model(path, model, preset="tiny")
    return path, model


def _rewrite(src, dest, meta=None, tensors=None):
    """Re-save a model file with edited tgdpet metadata and/or tensors, the way a foreign tool would."""
    with safe_open(src, "pt") as f:
        metadata = dict(f.metadata())
    data = safetensors.torch.load_file(src)
    if meta is not None:
        m = json.loads(metadata["tgdpet"])
        meta(m)
        metadata["tgdpet"] = json.dumps(m)
    if tensors is not None:
        tensors(data)
    safetensors.torch.save_file(data, dest, metadata=metadata)
    return dest


def test_round_trip_is_bit_identical(tmp_path):
    model = _model()
    masks1 = build_masks(model, 0.5)
    masks2 = build_masks(model, 0.6, conv1="freeze")
    prov = {"command": "tgd-finetune", "epochs": 3, "data": tmp_path / "data"}
    path = tmp_path / "m.safetensors"
    save_model(path, model, preset="tiny", masks=masks2, masks_history=[masks1, masks2], provenance=prov)
    rec = load_model(path)
    assert rec.config == model.config and rec.preset == "tiny"
    loaded = rec.model.state_dict()
    for name, t in model.state_dict().items():
        assert torch.equal(loaded[name], t) and loaded[name].dtype == t.dtype, name
    assert not rec.model.training
    assert all(torch.equal(rec.masks[i], masks2[i]) for i in masks2)
    assert len(rec.masks_history) == 2
    assert all(torch.equal(rec.masks_history[0][i], masks1[i]) for i in masks1)
    assert rec.provenance == {"command": "tgd-finetune", "epochs": 3, "data": str(tmp_path / "data")}
    assert rec.normalization == NORMALIZATION and rec.version == __version__
    x = torch.rand(2, 3, 9, 9)
    with torch.no_grad():
        assert torch.equal(rec.model(x), model.eval()(x))


def test_defaults_and_history_from_masks(tmp_path, saved):
    path, _ = saved
    rec = load_model(path)
    assert rec.masks is None and rec.masks_history == [] and rec.provenance == {}
    model = _model()
    masks = build_masks(model, 0.4)
    save_model(tmp_path / "t.safetensors", model, masks=masks, normalization={"method": "none"})
    rec = load_model(tmp_path / "t.safetensors")
    assert rec.preset is None and rec.normalization == {"method": "none"}
    assert len(rec.masks_history) == 1 and all(torch.equal(rec.masks_history[0][i], masks[i]) for i in masks)


def test_metadata_is_plain_json(saved):
    path, model = saved
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["tgdpet"])
    assert meta["format"] == "tgdpet-model" and meta["format_version"] == 1
    assert meta["architecture"] == model.config.to_dict()
    assert meta["torch_version"] == torch.__version__ and meta["tgdpet_version"] == __version__


def test_save_is_atomic_and_replaces(tmp_path, saved):
    path, _ = saved
    save_model(path, build_model("small"))
    assert load_model(path).config.widths[0] == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    with pytest.raises(TypeError):
        save_model(tmp_path / "x.safetensors", torch.nn.Linear(2, 2))
    assert not (tmp_path / "x.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_missing_file(tmp_path):
    with pytest.raises(TgdpetError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("zipfile", [True, False])
def test_pickle_checkpoints_are_refused(tmp_path, zipfile):
    path = tmp_path / "model.pt"
    torch.save(_model().state_dict(), path, _use_new_zipfile_serialization=zipfile)
    with pytest.raises(TgdpetError, match="refuses"):
        load_model(path)


def test_plain_pickle_is_refused_without_running_it(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(TgdpetError, match="pickle"):
        load_model(path)


@pytest.mark.parametrize("content", [b"", b"abc", b"hello world, this is a text file\n" * 10])
def test_other_files_are_refused(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(TgdpetError, match="not a"):
        load_model(path)


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.01])  # the last cuts into the JSON header
def test_truncated_files_are_refused(tmp_path, saved, keep):
    path, _ = saved
    data = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(TgdpetError, match="truncated"):
        load_model(bad)


def test_huge_size_claims_are_refused_before_reading(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(TgdpetError, match="truncated"):
        load_model(path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(TgdpetError, match="truncated"):
        load_model(path)


def test_damaged_header_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(TgdpetError, match="damaged"):
        load_model(path)


def test_foreign_safetensors_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(3)}, path, metadata={"format": "pt"})
    with pytest.raises(TgdpetError, match="not a tgdpet model"):
        load_model(path)


def test_architecture_mismatch_is_refused(tmp_path, saved):
    path, _ = saved

    def widen(m):
        m["architecture"]["widths"] = [16] * 7 + [3]

    with pytest.raises(TgdpetError, match="does not match its recorded architecture"):
        load_model(_rewrite(path, tmp_path / "a.safetensors", meta=widen))

    def forge(m):  # a real network of these widths would take 3.6 GB: refused without allocating it
        m["architecture"]["widths"] = [4096] * 7 + [3]

    with pytest.raises(TgdpetError, match="expected a \\[4096, 3, 3, 3\\] tensor"):
        load_model(_rewrite(path, tmp_path / "f.safetensors", meta=forge))
    with pytest.raises(TgdpetError, match="missing"):
        load_model(_rewrite(path, tmp_path / "b.safetensors", tensors=lambda d: d.pop("convs.3.bias")))
    with pytest.raises(TgdpetError, match="unexpected"):
        load_model(_rewrite(path, tmp_path / "c.safetensors", tensors=lambda d: d.update(extra=torch.ones(2))))

    def bad_arch(m):
        m["architecture"]["widths"] = [8, 8, 5]

    with pytest.raises(TgdpetError, match="invalid architecture"):
        load_model(_rewrite(path, tmp_path / "d.safetensors", meta=bad_arch))


def test_unsupported_format_version_is_refused(tmp_path, saved):
    path, _ = saved
    bad = _rewrite(path, tmp_path / "v2.safetensors", meta=lambda m: m.update(format_version=2))
    with pytest.raises(TgdpetError, match="format version 2"):
        load_model(bad)


def test_inconsistent_masks_are_refused(tmp_path, saved):
    path, _ = saved
    bad = _rewrite(path, tmp_path / "m.safetensors", meta=lambda m: m.update(masks={"1": [1, 0]}))
    with pytest.raises(TgdpetError, match="masks"):
        load_model(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, value):
    model = _model()
    with torch.no_grad():
        model.convs[2].weight[0, 0, 0, 0] = value
    save_model(tmp_path / "nan.safetensors", model)
    with pytest.raises(TgdpetError, match="NaN or infinite"):
        load_model(tmp_path / "nan.safetensors")


def _step(model, opt, x):
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def test_training_state_resumes_exactly(tmp_path):
    x = torch.rand(2, 3, 8, 8)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    _step(model, opt, x)
    save_model(tmp_path / "m.safetensors", model)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = {"optimizer": opt.state_dict(), "epoch": 4, "step": 10, "best": 0.25, "rng": capture_rng_state()}
    save_training_state(tmp_path / "state.pt", state)
    expected_draws = (random.random(), np.random.rand(), torch.rand(1))
    _step(model, opt, x)

    loaded = load_training_state(tmp_path / "state.pt")
    assert loaded["epoch"] == 4 and loaded["step"] == 10 and loaded["best"] == 0.25
    resumed = load_model(tmp_path / "m.safetensors").model.train()
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=1e-3, weight_decay=1e-2)
    opt2.load_state_dict(loaded["optimizer"])
    _step(resumed, opt2, x)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    restore_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand()) == expected_draws[:2]
    assert torch.equal(torch.rand(1), expected_draws[2])


def test_training_state_refuses_unloadable_values_and_keeps_old_file(tmp_path):
    path = tmp_path / "state.pt"
    save_training_state(path, {"epoch": 1})
    with pytest.raises(TypeError, match="cannot be loaded safely"):
        save_training_state(path, {"epoch": 2, "array": np.zeros(3)})
    assert load_training_state(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    "writer",
    [
        lambda p: torch.save({"obj": _Evil()}, p),
        lambda p: torch.save({"epoch": 1}, p),
        lambda p: p.write_bytes(b"garbage"),
        lambda p: p.write_bytes(b""),
    ],
    ids=["foreign-object", "not-tgdpet", "garbage", "empty"],
)
def test_bad_training_states_are_refused(tmp_path, writer, capsys):
    path = tmp_path / "state.pt"
    writer(path)
    with pytest.raises(TgdpetError, match="training state"):
        load_training_state(path)
    assert "unpickled!" not in capsys.readouterr().out


def test_missing_and_newer_training_state(tmp_path):
    with pytest.raises(TgdpetError, match="does not exist"):
        load_training_state(tmp_path / "none.pt")
    torch.save({"format": "tgdpet-training-state", "format_version": 9, "state": {}}, tmp_path / "s.pt")
    with pytest.raises(TgdpetError, match="version 9"):
        load_training_state(tmp_path / "s.pt")
