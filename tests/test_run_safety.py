"""train and tgd-finetune keep their inputs, refuse a resume that is not the same run, and never send the user in
a circle: inputs inside --out, another DATA or MODEL on --resume, a state of another network, a run stopped before
its first epoch, masks that retrain nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import tree_snapshot
from test_data import make_dataset

from tgdpet.checkpoint import load_model, load_training_state, save_model, save_training_state
from tgdpet.errors import TgdpetError
from tgdpet.models import build_model
from tgdpet.train import FinetuneConfig, TrainConfig, finetune, resolve_config, train
from tgdpet.train.loop import Step

FAST = dict(device="cpu", amp=False, patch_size=16, batch_size=16, patches_per_epoch=32, seed=0)


def train_cfg(**kw) -> TrainConfig:
    return resolve_config(TrainConfig, preset="tiny", **{**FAST, **kw})


def finetune_cfg(**kw) -> FinetuneConfig:
    return resolve_config(FinetuneConfig, **{**FAST, "phi": 0.5, **kw})


def one_line_error(fn) -> str:
    """``fn()`` raises a TgdpetError of one line; its message."""
    with pytest.raises(TgdpetError) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=1, n_val=1)


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("other"), n_train=1, n_val=1)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    return save_model(tmp_path_factory.mktemp("base") / "base.safetensors", build_model("tiny"), preset="tiny")


# --------------------------------------------------------------------------- inputs inside --out


def test_finetune_refuses_an_out_folder_holding_its_model_even_with_overwrite(tmp_path, dataset, base_model):
    """`tgd-finetune runX/best.safetensors DATA -o runX --overwrite` deleted and replaced its own MODEL."""
    run = tmp_path / "runX"
    run.mkdir()
    shutil.copy(base_model, run / "best.safetensors")
    before = tree_snapshot(run)
    message = one_line_error(
        lambda: finetune(run / "best.safetensors", dataset, run, finetune_cfg(iterations=1), overwrite=True,
                         progress_bar=False)  # fmt: skip
    )
    assert f"--out {run} holds the model {run / 'best.safetensors'}" in message and "another --out" in message
    assert tree_snapshot(run) == before


def test_train_refuses_an_out_folder_holding_its_data(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=1, n_val=0)
    before = tree_snapshot(tmp_path)
    message = one_line_error(
        lambda: train(data, tmp_path, train_cfg(iterations=1), overwrite=True, progress_bar=False)
    )
    assert f"--out {tmp_path} holds the data file {data}" in message
    assert tree_snapshot(tmp_path) == before


# --------------------------------------------------------------------------- resume with other inputs


def test_train_resume_refuses_other_data_and_leaves_the_run_as_it_was(tmp_path, dataset, other_dataset):
    out = tmp_path / "run"
    train(dataset, out, train_cfg(iterations=2), progress_bar=False)
    before = tree_snapshot(out)
    message = one_line_error(
        lambda: train(other_dataset, out, train_cfg(iterations=4), resume=True, progress_bar=False)
    )
    assert f"started with DATA {dataset.resolve()}" in message
    assert "resume with the original DATA, or drop --resume" in message
    assert tree_snapshot(out) == before
    assert load_model(out / "last.safetensors").provenance["data"] == str(dataset.resolve())


def test_train_resume_refuses_data_whose_manifest_changed_since(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=1, n_val=1)
    out = tmp_path / "run"
    train(data, out, train_cfg(iterations=2), progress_bar=False)
    manifest = json.loads(data.read_text())
    manifest["studies"][1]["split"] = "train"  # the validation study now trains too
    data.write_text(json.dumps(manifest))
    with pytest.raises(TgdpetError, match="started with DATA .* is not that file as it was then"):
        train(data, out, train_cfg(iterations=4), resume=True, progress_bar=False)


def test_finetune_resume_refuses_another_model(tmp_path, dataset, base_model):
    """Another MODEL's masks history and domain were recorded as the run's; one of another architecture
    (in_slices 5) crashed in load_state_dict."""
    out = tmp_path / "run"
    finetune(base_model, dataset, out, finetune_cfg(iterations=2), progress_bar=False)
    before = tree_snapshot(out)
    torch.manual_seed(2)
    for name, model in (("same-shape", build_model("tiny")), ("wider", build_model("tiny", in_slices=5))):
        other = save_model(tmp_path / f"{name}.safetensors", model, preset="tiny")
        message = one_line_error(
            lambda: finetune(other, dataset, out, finetune_cfg(iterations=4), resume=True, progress_bar=False)
        )
        assert f"started with MODEL {base_model.resolve()}" in message and "original MODEL" in message
    assert tree_snapshot(out) == before


def test_finetune_resume_refuses_a_training_state_of_another_network(tmp_path, dataset, base_model):
    out = tmp_path / "run"
    finetune(base_model, dataset, out, finetune_cfg(iterations=2), progress_bar=False)
    state = load_training_state(out / "training_state.pt")
    state["model"] = build_model("tiny", in_slices=5).state_dict()
    save_training_state(out / "training_state.pt", state)
    message = one_line_error(
        lambda: finetune(base_model, dataset, out, finetune_cfg(iterations=4), resume=True, progress_bar=False)
    )
    assert f"{out / 'training_state.pt'} holds the weights of another network than {base_model}" in message


# --------------------------------------------------------------------------- a run stopped before its first epoch


def test_a_run_stopped_before_its_first_epoch_starts_again_without_resume(tmp_path, dataset, monkeypatch):
    """Such a run left config.yaml alone: --resume said 'drop --resume', and without it 'pass --resume'."""
    out = tmp_path / "run"

    def interrupted(self, x, y, step):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Step, "__call__", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(dataset, out, train_cfg(iterations=2), progress_bar=False)
    assert list(out.iterdir()) == []
    with pytest.raises(TgdpetError, match="nothing to resume .* drop --resume to start the run.$"):
        train(dataset, out, train_cfg(iterations=2), resume=True, progress_bar=False)
    train(dataset, out, train_cfg(iterations=2), progress_bar=False)
    assert (out / "config.yaml").is_file() and (out / "training_state.pt").is_file()


def test_resume_in_a_folder_without_state_names_a_way_that_works(tmp_path, dataset):
    """A folder holding only the config.yaml of an older tgdpet's stopped run: the advice given must work."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("epochs: 1\n")
    with pytest.raises(TgdpetError, match="drop --resume and add --overwrite"):
        train(dataset, out, train_cfg(iterations=2), resume=True, progress_bar=False)
    train(dataset, out, train_cfg(iterations=2), overwrite=True, progress_bar=False)
    assert (out / "training_state.pt").is_file()


# --------------------------------------------------------------------------- masks that retrain nothing


def test_finetune_refuses_a_phi_that_retrains_nothing_before_writing(tmp_path, dataset, base_model):
    """KSE scores are >= 0, so at phi 0 no kernel scores below it: 'training 0 of 4,043 parameters' was a success."""
    out = tmp_path / "run"
    message = one_line_error(
        lambda: finetune(base_model, dataset, out, finetune_cfg(iterations=1, phi=0.0), progress_bar=False)
    )
    assert "at --phi 0 no kernel" in message and "retrain nothing; pass a larger --phi" in message
    assert not out.exists()


def test_a_config_file_inside_out_is_refused_for_a_new_run(tmp_path, dataset):
    from click.testing import CliRunner

    from tgdpet.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 1\npreset: tiny\n")
    before = tree_snapshot(tmp_path)
    args = ["train", str(dataset), "-o", str(run), "--config", str(run / "config.yaml"), "--overwrite",
            "--device", "cpu", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "lies in --out" in result.output, result.output
    assert tree_snapshot(tmp_path) == before
