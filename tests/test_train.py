"""Training workflows end to end on tiny NIfTI datasets: train, resume, tgd-finetune (and baselines), n2n-online."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import suv_meta, write_test_series
from test_data import make_dataset

from tgdpet import __version__, tgd
from tgdpet.checkpoint import load_model, load_training_state, save_model, save_training_state
from tgdpet.cli import main
from tgdpet.data import PatchDataset, load_manifest, load_studies
from tgdpet.errors import TgdpetError
from tgdpet.io import Volume, read_volume
from tgdpet.models import bn_after, build_model, get_config
from tgdpet.train import FinetuneConfig, Method, TrainConfig, build_method, ddp, finetune, resolve_config, train
from tgdpet.config import to_yaml
from tgdpet.precision import amp_dtype
from tgdpet.train.loop import calibrate_batchnorm, learning_rate, training_loss, validate
from tgdpet.train.workflows import patch_dataset

FAST = dict(device="cpu", amp=False, patch_size=16, batch_size=16, patches_per_epoch=64, seed=0)


def train_cfg(**kw) -> TrainConfig:
    return resolve_config(TrainConfig, preset="tiny", **{**FAST, **kw})


def finetune_cfg(**kw) -> FinetuneConfig:
    return resolve_config(FinetuneConfig, **{**FAST, **kw})


def weights(path) -> dict[str, torch.Tensor]:
    return load_model(path).model.state_dict()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), halves=True)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> str:
    """A tiny model that has seen some training (BN statistics and weights no longer at init)."""
    torch.manual_seed(1)
    model = build_model("tiny")
    with torch.no_grad():
        for bn in model.bns:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_model(path, model, preset="tiny")
    return str(path)


# --------------------------------------------------------------------------- train


def test_train_writes_a_run_and_learns(tmp_path, dataset):
    out = tmp_path / "run"
    cfg = train_cfg(epochs=4, patches_per_epoch=256)
    result = train(dataset, out, cfg, progress_bar=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["step"] == 64 and rows[-1]["patches_seen"] == 64 * 16
    assert rows[-1]["train_loss"] < 0.95 * rows[0]["train_loss"]
    assert rows[-1]["val_loss"] < 0.9 * rows[0]["val_loss"]
    assert all(np.isfinite(r["val_psnr"]) and r["lr"] == 1e-3 for r in rows)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # config.yaml is the resolved config and repeats the run when passed back
    assert resolve_config(TrainConfig, out / "config.yaml") == cfg
    best, last = load_model(out / "best.safetensors"), load_model(out / "last.safetensors")
    assert best.preset == "tiny" and best.masks is None
    assert best.provenance["selected_by"] == "val_loss"
    assert best.provenance["epochs"] == result.progress.best_epoch
    assert last.provenance["epochs"] == 4 and last.provenance["patches_seen"] == 1024
    assert last.provenance["train_studies"] == ["s000", "s001"] and last.provenance["val_studies"] == ["s002"]
    assert last.provenance["tgdpet_version"] and last.provenance["wall_time_s"] > 0
    assert last.provenance["precision"] == "fp32"  # FAST pins amp=False
    # the range of images it knows: make_dataset's voxels are 2 x 2 x 3 mm (x, y, z), in Bq/mL
    domain = last.provenance["domain"]
    assert domain["voxel_min_mm"] == domain["voxel_max_mm"] == [3.0, 2.0, 2.0] and domain["units"] == ["BQML"]
    for k, v in result.model.state_dict().items():
        assert torch.equal(v.contiguous(), last.model.state_dict()[k])


def test_val_every_validates_those_epochs_and_the_last_and_picks_the_best_of_them(tmp_path, dataset):
    every = train(dataset, tmp_path / "every", train_cfg(epochs=5), progress_bar=False)
    sparse = train(dataset, tmp_path / "sparse", train_cfg(epochs=5, val_every=2), progress_bar=False)
    rows_every = [json.loads(x) for x in (tmp_path / "every" / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (tmp_path / "sparse" / "metrics.jsonl").read_text().splitlines()]
    validated = {r["epoch"]: r["val_loss"] for r in rows if r["val_loss"] is not None}
    assert sorted(validated) == [2, 4, 5] and all(r["val_psnr"] is None for r in rows if r["epoch"] in (1, 3))
    # validation does not change training: the same weights, so the same loss as validating every epoch
    assert validated == {r["epoch"]: r["val_loss"] for r in rows_every if r["epoch"] in validated}
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in rows_every]
    best_epoch = min(validated, key=validated.get)
    best = load_model(tmp_path / "sparse" / "best.safetensors")
    assert sparse.progress.best_epoch == best.provenance["epochs"] == best_epoch
    assert best.provenance["val_loss"] == validated[best_epoch]
    assert every.progress.best_epoch == min(
        (r["epoch"] for r in rows_every), key=lambda e: rows_every[e - 1]["val_loss"]
    )


def test_a_resumed_run_may_change_how_often_it_validates(tmp_path, dataset):
    out = tmp_path / "run"
    train(dataset, out, train_cfg(epochs=2), progress_bar=False)
    train(dataset, out, train_cfg(epochs=4, val_every=4), resume=True, progress_bar=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["val_loss"] is not None] == [1, 2, 4]


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, dataset, monkeypatch):
    cfg = train_cfg(epochs=3)  # 4 steps per epoch
    train(dataset, tmp_path / "a", cfg, progress_bar=False)

    # Leg 1 stops mid-epoch 2 (--iterations 6); leg 2 resumes with --epochs 3 and is killed at
    # global step 10; leg 3 resumes from the end of epoch 2 and finishes.
    out = tmp_path / "b"
    train(dataset, out, train_cfg(iterations=6), progress_bar=False)
    assert load_training_state(out / "training_state.pt")["progress"]["step"] == 6
    calls = {"n": 0}

    def interrupt(self):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Method, "after_step", interrupt)
        with pytest.raises(KeyboardInterrupt):
            train(dataset, out, cfg, resume=True, progress_bar=False)
    assert load_training_state(out / "training_state.pt")["progress"]["step"] == 8
    train(dataset, out, cfg, resume=True, progress_bar=False)

    a, b = weights(tmp_path / "a" / "last.safetensors"), weights(out / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"], r["train_loss"], r["val_loss"]) for r in rows_a] == [
        (r["epoch"], r["step"], r["train_loss"], r["val_loss"]) for r in rows_b
    ]


def first_bn_statistics(model, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """By hand: the mean over ``batches`` of the batch mean and unbiased variance of conv2's output."""
    c1, c2 = model.convs[0], model.convs[1]
    means, variances = [], []
    for x in batches:
        y = torch.nn.functional.conv2d(torch.relu(torch.nn.functional.conv2d(x, c1.weight, c1.bias, padding=1)),
                                       c2.weight, c2.bias, padding=1).double()  # fmt: skip
        means.append(y.mean(dim=(0, 2, 3)))
        variances.append(y.var(dim=(0, 2, 3), unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


def test_calibrate_batchnorm_worked_by_hand(base_model):
    model = load_model(base_model).model.train()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 3, 12, 12, generator=gen) * scale for scale in (0.5, 1.0, 3.0)]
    weights_before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    calibrate_batchnorm(model, Method(model), [(x, None) for x in batches], device=torch.device("cpu"),
                        dtype=None, channels_last=False)  # fmt: skip
    mean, var = first_bn_statistics(model, batches)
    torch.testing.assert_close(model.bns[0].running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bns[0].running_var.double(), var, rtol=1e-5, atol=1e-6)
    assert model.bns[0].momentum == 0.01  # the model's running averages again for further training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights_before.items() if "num_batches" not in k)


def test_a_saved_model_carries_the_batchnorm_statistics_of_its_own_weights(tmp_path, dataset):
    """Saved statistics: the mean over the epoch's first bn_batches batches at the saved weights.

    PyTorch's running averages (bn_batches 0) blend earlier weights' statistics instead.
    """
    cfg = train_cfg(epochs=1, bn_batches=2, lr=1e-2)  # 4 steps of 16 patches
    train(dataset, tmp_path / "precise", cfg, progress_bar=False)
    train(dataset, tmp_path / "running", train_cfg(epochs=1, bn_batches=0, lr=1e-2), progress_bar=False)
    precise = load_model(tmp_path / "precise" / "last.safetensors")
    running = load_model(tmp_path / "running" / "last.safetensors")
    assert all(torch.equal(precise.model.convs[i].weight, running.model.convs[i].weight) for i in range(2))
    patches = patch_dataset(load_studies(load_manifest(dataset), "train"), precise.model, cfg, ddp.DistEnv())
    patches.set_epoch(0)
    batches = [patches.__getitems__(list(range(b * 16, (b + 1) * 16)))[0] for b in range(2)]
    mean, var = first_bn_statistics(precise.model, batches)
    torch.testing.assert_close(precise.model.bns[0].running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(precise.model.bns[0].running_var.double(), var, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(running.model.bns[0].running_mean.double(), mean, rtol=1e-2, atol=1e-3)


def test_run_folder_rules(tmp_path, dataset):
    out = tmp_path / "run"
    train(dataset, out, train_cfg(iterations=2), progress_bar=False)
    with pytest.raises(TgdpetError, match="already holds files"):
        train(dataset, out, train_cfg(iterations=2), progress_bar=False)
    config = (out / "config.yaml").read_text()
    with pytest.raises(TgdpetError, match="cannot resume.*lr"):
        train(dataset, out, train_cfg(iterations=4, lr=0.01), resume=True, progress_bar=False)
    assert (out / "config.yaml").read_text() == config
    with pytest.raises(TgdpetError, match="nothing to resume"):
        train(dataset, tmp_path / "new", train_cfg(iterations=2), resume=True, progress_bar=False)
    train(dataset, out, train_cfg(iterations=3), overwrite=True, progress_bar=False)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    nested = tmp_path / "runs" / "v1"  # `--out runs/v1` on a fresh checkout makes runs/ too
    train(dataset, nested, train_cfg(iterations=1), progress_bar=False)
    assert (nested / "last.safetensors").is_file()


def test_a_run_of_an_older_tgdpet_resumes_when_its_settings_mean_the_same(tmp_path, dataset):
    """0.2.0 wrote no detail_weight (added later, default 0 = its plain MSE) and amp=None (auto: fp32 for the
    tiny net on a CPU); resuming with detail_weight 0 and amp False trains the same, so it must be allowed."""
    out = tmp_path / "run"
    train(dataset, out, train_cfg(iterations=2), progress_bar=False)  # fp32 on the CPU
    state = load_training_state(out / "training_state.pt")
    del state["config"]["detail_weight"]
    state["config"]["amp"] = None
    save_training_state(out / "training_state.pt", state)
    assert amp_dtype(None, torch.device("cpu"), get_config("tiny")) is None  # what makes None and False the same
    for changed, words in (({"detail_weight": 1.0}, "detail_weight: 0.0 -> 1.0"), ({"amp": True}, "amp: None -> True")):
        with pytest.raises(TgdpetError, match=f"cannot resume.*{words}"):
            train(dataset, out, train_cfg(iterations=4, **changed), resume=True, progress_bar=False)
    train(dataset, out, train_cfg(iterations=4), resume=True, progress_bar=False)
    assert load_training_state(out / "training_state.pt")["progress"]["step"] == 4


def test_diverging_training_stops_with_a_clear_error(tmp_path, dataset):
    out = tmp_path / "run"
    with pytest.raises(TgdpetError, match="training diverged"):
        train(dataset, out, train_cfg(epochs=2, lr=1e12), progress_bar=False)
    assert not (out / "last.safetensors").exists() and not (out / "training_state.pt").exists()


def test_amp_choice_and_bf16_training(tmp_path, dataset):
    cpu = torch.device("cpu")
    assert amp_dtype(False, cpu, get_config("paper")) is None
    assert amp_dtype(None, cpu, get_config("tiny")) is None  # bf16 does not pay for narrow nets on CPU
    assert amp_dtype(True, cpu, get_config("tiny")) == torch.bfloat16
    result = train(dataset, tmp_path / "bf16", train_cfg(iterations=3, amp=True), progress_bar=False)
    assert np.isfinite(result.progress.history[-1]["train_loss"])
    saved = weights(tmp_path / "bf16" / "last.safetensors").values()
    assert all(t.dtype == torch.float32 for t in saved if t.is_floating_point())
    # The model file says what the steps ran in.
    assert result.precision == load_model(tmp_path / "bf16" / "last.safetensors").provenance["precision"] == "bf16"


def test_cosine_schedule_worked_by_hand(tmp_path, dataset):
    cfg = train_cfg(epochs=2, lr_schedule="cosine")  # 64 patches of 16 per epoch: 4 steps each, 8 in all
    assert [learning_rate(cfg, k) for k in (0, 2, 4, 6)] == pytest.approx([1e-3, 8.535534e-4, 5e-4, 1.464466e-4])
    assert learning_rate(train_cfg(), 6) == 1e-3  # the paper's constant rate stays the default
    train(dataset, tmp_path / "run", cfg, progress_bar=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # The rate each epoch's last step (steps 3 and 7) took: 1e-3 (1 + cos(3 pi / 8)) / 2 and (1 + cos(7 pi / 8)) / 2.
    assert [r["lr"] for r in rows] == pytest.approx([6.913417e-4, 3.806023e-5])
    with pytest.raises(TgdpetError, match="unknown lr-schedule 'step'"):
        resolve_config(TrainConfig, lr_schedule="step")


def test_config_errors(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(TgdpetError, match="unknown keys learning_rate"):
        resolve_config(TrainConfig, bad)
    bad.write_text("lr: fast\n")
    with pytest.raises(TgdpetError, match="'lr' must be a float"):
        resolve_config(TrainConfig, bad)
    with pytest.raises(TgdpetError, match="unknown method"):
        resolve_config(FinetuneConfig, method="some")
    with pytest.raises(TgdpetError, match="smaller than one batch"):
        resolve_config(TrainConfig, patches_per_epoch=8, batch_size=16)
    with pytest.raises(TgdpetError, match="val-every must be positive, got 0"):
        resolve_config(FinetuneConfig, val_every=0)
    cfg = resolve_config(FinetuneConfig, lr="1e-4", epochs=2)  # YAML reads 1e-4 as a string
    assert cfg.lr == 1e-4
    bad.write_text(to_yaml(cfg, header="a comment"))
    assert resolve_config(FinetuneConfig, bad) == cfg and yaml.safe_load(bad.read_text())["method"] == "tgd"


# --------------------------------------------------------------------------- tgd-finetune and baselines


def test_tgd_finetune_retrains_only_meaningless_kernels(tmp_path, dataset, base_model):
    phi = 0.5
    base = load_model(base_model)
    masks = tgd.build_masks(base.model, phi)
    assert any(m.any() for m in masks.values()) and not all(m.all() for m in masks.values())
    out = tmp_path / "tgd"
    result = finetune(base_model, dataset, out, finetune_cfg(epochs=2, phi=phi), progress_bar=False)
    tuned = load_model(out / "last.safetensors")
    assert {i: m.tolist() for i, m in tuned.masks.items()} == {i: m.tolist() for i, m in masks.items()}
    assert len(tuned.masks_history) == 1
    changed = 0
    for i, keep in masks.items():
        frozen = ~keep
        a, b = base.model.convs[i], tuned.model.convs[i]
        # A frozen channel's kernels read a retrained map of the layer before with new weights (read_kernels
        # retrain, the default); every other entry of a frozen channel is kept.
        reads_retrained = masks[i - 1] if i > 0 else torch.zeros(a.in_channels, dtype=torch.bool)
        kept = a.weight[frozen][:, ~reads_retrained]
        assert torch.equal(kept, b.weight[frozen][:, ~reads_retrained]) and torch.equal(a.bias[frozen], b.bias[frozen])
        changed += int((a.weight[keep] != b.weight[keep]).any())
        bn_a, bn_b = bn_after(base.model, i), bn_after(tuned.model, i)
        if bn_a is not None:
            for name in ("weight", "bias", "running_mean", "running_var"):
                assert torch.equal(getattr(bn_a, name)[frozen], getattr(bn_b, name)[frozen]), (i, name)
    assert changed >= 2
    # The noise classifier is frozen, except that it learns to read the retrained maps of the layer before it.
    reads = masks[len(masks) - 2]
    assert torch.equal(base.model.convs[-1].weight[:, ~reads], tuned.model.convs[-1].weight[:, ~reads])
    assert torch.equal(base.model.convs[-1].bias, tuned.model.convs[-1].bias)
    summary = tuned.provenance["method"]
    assert summary["method"] == "tgd" and summary["phi"] == phi
    assert [summary[k] for k in ("tgd_mode", "conv1", "bn_stats", "read_kernels")] == [
        "parameter", "freeze", "stored", "retrain"
    ]
    assert summary["flagged_parameters"] == tgd.count_retrained(base.model, masks).retrained_parameters
    reads = sum(int((~masks[i]).sum()) * int(masks[i - 1].sum()) * 9 for i in range(1, len(masks)))
    assert summary["retrained_parameters"] == summary["flagged_parameters"] + reads
    assert result.method == summary


def test_tgd_revives_a_silent_flagged_channel_and_it_learns(tmp_path, dataset, base_model):
    """A channel the penalty emptied (zero map, zero readers) is flagged by KSE; --revive gives it new kernels."""
    record = load_model(base_model)
    model = record.model
    with torch.no_grad():
        model.bns[1].weight[3], model.bns[1].bias[3] = 0.0, -1.0  # conv 2, channel 3: silent after its ReLU
        model.convs[3].weight[:, 3] = 0.0  # and read by nothing: KSE 0
    silent_base = save_model(tmp_path / "silent.safetensors", model, preset="tiny")
    runs = {}
    for revive in (False, True):
        runs[revive] = tmp_path / f"revive{revive}"
        finetune(silent_base, dataset, runs[revive], finetune_cfg(epochs=2, phi=0.3, revive=revive), progress_bar=False)
    plain, revived = (load_model(runs[r] / "last.safetensors") for r in (False, True))
    assert plain.provenance["method"]["revived_channels"] == 0
    assert revived.provenance["method"]["revived_channels"] >= 1
    assert bool(revived.masks[2][3])  # flagged
    # without reviving, a silent channel and its readers get no gradient: fine-tuning leaves them as they were
    assert torch.equal(plain.model.convs[2].weight[3], model.convs[2].weight[3])
    assert torch.equal(plain.model.convs[3].weight[:, 3], model.convs[3].weight[:, 3])
    # revived, it has new kernels and the next layer has learnt to read it
    assert not torch.equal(revived.model.convs[2].weight[3], model.convs[2].weight[3])
    assert revived.model.convs[3].weight[:, 3].abs().sum() > 0


def test_tgd_resume_refuses_another_model_and_ends_as_the_uninterrupted_run(tmp_path, dataset, base_model):
    """Resuming TGD with another MODEL file is refused (the run's record would name it); with a copy of the
    original model file it ends as the uninterrupted run."""
    cfg = finetune_cfg(epochs=2, phi=0.5)
    finetune(base_model, dataset, tmp_path / "a", cfg, progress_bar=False)
    out = tmp_path / "b"
    finetune(base_model, dataset, out, finetune_cfg(iterations=3, phi=0.5), progress_bar=False)
    other = save_model(tmp_path / "other.safetensors", build_model("tiny"), preset="tiny")
    with pytest.raises(TgdpetError, match="cannot resume.*started with MODEL.*original MODEL, or drop --resume"):
        finetune(other, dataset, out, cfg, resume=True, progress_bar=False)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(Path(base_model).read_bytes())
    finetune(copy, dataset, out, cfg, resume=True, progress_bar=False)
    a, b = weights(tmp_path / "a" / "last.safetensors"), weights(out / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tgd_twice_appends_masks_from_the_finetuned_weights(tmp_path, dataset, base_model):
    first, second = tmp_path / "tgd1", tmp_path / "tgd2"
    finetune(base_model, dataset, first, finetune_cfg(iterations=3, phi=0.5), progress_bar=False)
    once = load_model(first / "last.safetensors")
    finetune(first / "last.safetensors", dataset, second, finetune_cfg(iterations=3, phi=0.6), progress_bar=False)
    twice = load_model(second / "last.safetensors")
    assert len(twice.masks_history) == 2
    assert all(torch.equal(twice.masks_history[0][i], once.masks[i]) for i in once.masks)
    expected = tgd.build_masks(once.model, 0.6)
    assert all(torch.equal(twice.masks[i], expected[i]) for i in expected)


def test_last3_trains_only_the_last_three_blocks(tmp_path, dataset, base_model):
    out = tmp_path / "ft"
    finetune(base_model, dataset, out, finetune_cfg(epochs=1, method="last3"), progress_bar=False)
    base, tuned = weights(base_model), weights(out / "last.safetensors")
    n = len(load_model(base_model).model.convs)
    trained = {f"convs.{i}." for i in range(n - 3, n)} | {f"bns.{i - 1}." for i in range(n - 3, n - 1)}
    for name, value in base.items():
        is_trained = any(name.startswith(p) for p in trained)
        if is_trained and not name.endswith("num_batches_tracked"):
            assert not torch.equal(value, tuned[name]), name
        elif not is_trained:
            assert torch.equal(value, tuned[name]), name  # includes frozen BN running statistics
    assert load_model(out / "last.safetensors").masks is None


def test_ewc_penalty_and_finetune(tmp_path, dataset, base_model):
    cfg = finetune_cfg(epochs=2, method="ewc", ewc_lambda=10.0, ewc_patches=32)
    model = load_model(base_model).model
    studies = load_studies(load_manifest(dataset), "train")
    patches = PatchDataset(studies, patch_size=16, in_slices=3, length=64, seed=0)
    method = build_method(model, cfg, patches=patches, device=torch.device("cpu"))
    assert float(method.penalty().detach()) == 0.0  # at theta*
    flat = torch.cat([f.flatten() for f in method.fisher.values()])
    assert flat.mean().item() == pytest.approx(1.0) and bool((flat >= 0).all()) and flat.max() > 2
    with torch.no_grad():
        model.convs[2].weight.add_(0.1)
    assert float(method.penalty().detach()) > 0

    out = tmp_path / "ewc"
    finetune(base_model, dataset, out, cfg, progress_bar=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["penalty"] > 0 and np.isfinite(rows[-1]["train_loss"])
    assert load_model(out / "last.safetensors").provenance["method"]["ewc_lambda"] == 10.0


# --------------------------------------------------------------------------- command line


def test_cli_train_and_n2n_online(tmp_path, dataset, base_model):
    runner = CliRunner()
    common = ["--device", "cpu", "--no-amp", "--patch-size", "16", "--batch-size", "16", "--no-progress"]
    out = tmp_path / "run"
    args = ["train", str(dataset), "--out", str(out), "--preset", "tiny", "--iterations", "2"]
    args += ["--patches-per-epoch", "32"]
    res = runner.invoke(main, args + common)
    assert res.exit_code == 0, res.output
    assert "Done: 2 steps" in res.output and (out / "best.safetensors").exists()
    res = runner.invoke(main, args + common)
    assert res.exit_code == 2 and "already holds files" in res.output
    # --resume takes the run's own settings (preset, patches per epoch) from its config.yaml
    res = runner.invoke(main, ["train", str(dataset), "--out", str(out), "--resume", "--iterations", "4"] + common)
    assert res.exit_code == 0, res.output
    assert "Done: 4 steps" in res.output and "config.yaml" in res.output
    assert yaml.safe_load((out / "config.yaml").read_text())["iterations"] == 4

    study = load_manifest(dataset).studies[0]
    denoised, adapted = tmp_path / "denoised.nii.gz", tmp_path / "adapted.safetensors"
    args = ["n2n-online", base_model, str(study.halves[0]), str(study.halves[1]), "-o", str(denoised)]
    args += ["--save-model", str(adapted), "--epochs", "2", "--patches-per-epoch", "32"]
    res = runner.invoke(main, args + common)
    assert res.exit_code == 2 and "do not look like one scan" in res.output  # toy halves: Poisson at 2 counts/unit
    args += ["--skip-halves-check"]
    res = runner.invoke(main, args + common)
    assert res.exit_code == 0, res.output
    h1, h2, result = read_volume(study.halves[0]), read_volume(study.halves[1]), read_volume(denoised)
    assert result.shape == h1.shape and np.array_equal(result.affine, h1.affine)
    mean = (h1.data + h2.data) / 2
    assert np.isfinite(result.data).all() and not np.allclose(result.data, mean)
    assert abs(result.data.mean() / mean.mean() - 1) < 0.2  # the mean of the halves, not their sum
    record = load_model(adapted)
    assert len(record.masks_history) == 1 and record.provenance["workflow"] == "n2n-online"
    assert record.provenance["method"]["phi"] == 0.4
    res = runner.invoke(main, args + common)
    assert res.exit_code == 2 and "already exists" in res.output


def test_n2n_online_dicom_result_names_the_base_model_the_adaptation_and_the_grid(tmp_path, dataset, base_model):
    """An n2n-online result is not the base model's: its DICOM slices say so, with the base file's hash (computed
    here), the method and steps (1 epoch of 32 patches in batches of 16: 2), and the grid the network ran on,
    the halves' own 2 x 2 x 3 mm voxels (make_dataset's), as a PACS reader of ``denoise`` output is told."""
    study = load_manifest(dataset).studies[0]
    halves = []
    for k, path in enumerate(study.halves):
        half = read_volume(path)
        scan = Volume(data=half.data, affine=half.affine, units="BQML", meta=suv_meta())
        write_test_series(tmp_path / f"half{k + 1}", scan)
        halves.append(str(tmp_path / f"half{k + 1}"))
    out = tmp_path / "adapted_series"
    args = ["n2n-online", base_model, *halves, "-o", str(out), "--skip-halves-check", "--epochs", "1",
            "--patches-per-epoch", "32", "--batch-size", "16", "--patch-size", "16", "--device", "cpu", "--no-amp",
            "--no-progress"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    grid = "working grid 2 x 2 x 3 mm; the image's voxels are 2 x 2 x 3 mm"
    assert f"({grid})." in res.output
    sha = hashlib.sha256(Path(base_model).read_bytes()).hexdigest()[:12]
    derivations = {pydicom.dcmread(f, stop_before_pixels=True).DerivationDescription for f in out.iterdir()}
    assert derivations == {
        f"tgdpet denoised (tgdpet {__version__}): model base (SHA-256 {sha}) adapted to this study by n2n-online "
        f"(tgd, phi 0.4, 2 steps); {grid}"
    }


@pytest.mark.parametrize("command", ["train", "tgd-finetune"])
def test_every_loop_option_reaches_the_runs_config(tmp_path, dataset, base_model, command):
    # 0.2.0's CLI accepted --structure-fraction and dropped it: the run used the default.
    given = {"seed": 3, "iterations": 2, "patches_per_epoch": 32, "batch_size": 16, "patch_size": 16,
             "lr": 5e-4, "workers": 0, "structure_fraction": 0.8, "detail_weight": 2.5,
             "lr_schedule": "cosine", "bn_batches": 4, "val_every": 2}  # fmt: skip
    out = tmp_path / "run"
    args = [command, *([base_model] if command == "tgd-finetune" else []), str(dataset), "--out", str(out)]
    args += ["--device", "cpu", "--no-amp", "--no-progress"]
    args += [a for key, value in given.items() for a in (f"--{key.replace('_', '-')}", str(value))]
    args += ["--noise-relative-loss"]
    res = CliRunner().invoke(main, args + (["--preset", "tiny"] if command == "train" else []))
    assert res.exit_code == 0, res.output
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert {key: config[key] for key in given} == given
    assert config["device"] == "cpu" and config["amp"] is False and config["noise_relative_loss"] is True


def test_train_in_slices_gives_a_network_that_sees_that_many_slices(tmp_path, dataset):
    out = tmp_path / "run"
    args = ["train", str(dataset), "--out", str(out), "--preset", "tiny", "--in-slices", "5", "--device", "cpu"]
    args += ["--no-amp", "--no-progress", "--iterations", "2", "--patches-per-epoch", "32", "--batch-size", "16"]
    res = CliRunner().invoke(main, args + ["--patch-size", "16"])
    assert res.exit_code == 0, res.output
    record = load_model(out / "last.safetensors")
    assert record.model.config.in_slices == 5 and record.model.convs[0].in_channels == 5
    assert record.model.convs[-1].out_channels == 5
    assert yaml.safe_load((out / "config.yaml").read_text())["in_slices"] == 5
    res = CliRunner().invoke(main, args + ["--overwrite", "--in-slices", "4"])
    assert res.exit_code == 2 and "in-slices must be a positive odd number" in res.output


def test_detail_weighted_loss_worked_by_hand():
    # A 5x5 target, 0 but for 25 at the centre. Each pixel's replicated 5x5 box holds the centre exactly once,
    # so the box mean is 1 everywhere: detail 24 at the centre, 1 elsewhere; with weight 1 the pixel weights
    # are 25 and 2 (mean 73/25).
    target = torch.zeros(1, 1, 5, 5)
    target[0, 0, 2, 2] = 25.0
    everywhere = target + 1.0
    centre = target.clone()
    centre[0, 0, 2, 2] += 1.0
    assert training_loss(everywhere, target, 1.0).item() == pytest.approx(1.0)
    assert training_loss(centre, target, 1.0).item() == pytest.approx(25 / 73)
    assert training_loss(centre, target, 0.0).item() == pytest.approx(1 / 25)  # plain MSE
    flat = torch.full((2, 3, 8, 8), 4.0)  # no detail: weights all 1, the MSE
    noisy = flat + torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert training_loss(noisy, flat, 7.0).item() == pytest.approx(torch.mean((noisy - flat) ** 2).item(), rel=1e-6)


def test_noise_relative_loss_worked_by_hand():
    # Two flat patches (no detail: weights 1) of 0 with inputs 0.1 and 1.0, noise powers 0.01 and 1; both outputs
    # keep a quarter of their input's noise power (errors 0.05 and 0.5). Dividing by the power (+ 1e-4), the clean
    # patch counts as much as the noisy one; the absolute loss is all the noisy patch's.
    target = torch.zeros(2, 3, 4, 4)
    noisy = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 1.0)])
    out = noisy / 2
    w1, w2 = 1 / 0.0101, 1 / 1.0001
    by_hand = (w1 * 0.0025 + w2 * 0.25) / (w1 + w2) * (0.01 + 1) / 2
    assert training_loss(out, target, 0.0, noisy).item() == pytest.approx(by_hand, rel=1e-6)
    assert training_loss(out, target, 5.0, noisy).item() == pytest.approx(by_hand, rel=1e-6)
    assert training_loss(out, target, 0.0).item() == pytest.approx((0.0025 + 0.25) / 2, rel=1e-6)
    cleaner = out.clone()
    cleaner[0] = 0.0  # the clean patch denoised perfectly: the relative loss falls by half, the absolute by 1 %
    relative = training_loss(cleaner, target, 0.0, noisy) / training_loss(out, target, 0.0, noisy)
    assert relative.item() == pytest.approx(w2 * 0.25 / (w1 * 0.0025 + w2 * 0.25), rel=1e-6)
    assert 0.49 < relative.item() < 0.51
    assert training_loss(cleaner, target, 0.0).item() / training_loss(out, target, 0.0).item() > 0.99


@pytest.mark.parametrize("flag", [True, False])
def test_the_loop_hands_the_noisy_input_to_the_loss_only_when_asked(tmp_path, dataset, monkeypatch, flag):
    import tgdpet.train.loop as loop

    seen = []

    def spy(out, target, detail_weight=0.0, noisy=None):
        seen.append(noisy)
        return training_loss(out, target, detail_weight, noisy)

    monkeypatch.setattr(loop, "training_loss", spy)
    cfg = TrainConfig(preset="tiny", iterations=2, patches_per_epoch=32, batch_size=16, patch_size=16, device="cpu",
                      amp=False, noise_relative_loss=flag)  # fmt: skip
    train(dataset, tmp_path / "run", cfg, progress_bar=False)
    assert len(seen) == 2
    for noisy in seen:
        assert (noisy is not None) == flag
        if flag:  # the network's input, not its output or the target: (batch, slices, patch, patch)
            assert noisy.shape == (16, 3, 16, 16) and float(noisy.std()) > 0


def test_validation_loss_follows_the_detail_weight_and_psnr_stays_the_mse(dataset):
    studies = load_studies(load_manifest(dataset), "val")
    model = build_model("tiny")
    cpu = torch.device("cpu")
    plain_loss, plain_psnr = validate(model, studies, device=cpu, dtype=None)
    weighted_loss, weighted_psnr = validate(model, studies, device=cpu, dtype=None, detail_weight=5.0)
    # Worked without validate: the centre-slice output of every slice, the plain MSE and its PSNR per input.
    half = model.config.in_slices // 2
    mses, psnrs = [], []
    with torch.no_grad():
        for study in studies:
            z = np.arange(study.shape[0])
            for inp, scale in zip(study.inputs, study.scales):
                x = torch.from_numpy(inp[np.clip(z[:, None] + np.arange(-half, half + 1), 0, len(z) - 1)] / scale)
                out = model(x.float())[:, half].numpy()
                mse = float(np.mean((out - study.target / scale) ** 2))
                mses.append(mse)
                psnrs.append(10 * np.log10((study.target.max() / scale) ** 2 / mse))
    assert plain_loss == pytest.approx(np.mean(mses), rel=1e-5)
    assert plain_psnr == pytest.approx(np.mean(psnrs), rel=1e-5) and weighted_psnr == pytest.approx(plain_psnr)
    assert weighted_loss != pytest.approx(plain_loss, rel=1e-3)


def test_finetune_and_n2n_refuse_a_model_with_another_normalisation(tmp_path, dataset):
    model = save_model(tmp_path / "m.safetensors", build_model("tiny"), preset="tiny", normalization={"method": "max"})
    study = load_manifest(dataset).studies[0]
    common = ["--device", "cpu", "--no-progress"]
    for args in (["tgd-finetune", str(model), str(dataset), "--out", str(tmp_path / "run")],
                 ["n2n-online", str(model), str(study.halves[0]), str(study.halves[1]), "-o", str(tmp_path / "o.nii"),
                  "--skip-halves-check"]):
        res = CliRunner().invoke(main, args + common)
        assert res.exit_code == 2 and "normalisation" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# --------------------------------------------------------------------------- channel penalty (spare capacity for TGD)


def test_channel_penalty_worked_by_hand(base_model):
    """One L2 norm per scored feature map over what makes it (BN gamma and beta; conv1's kernel and bias) and
    what reads it (the next conv's kernels), summed: written out channel by channel in float64."""
    from tgdpet.train.methods import channel_penalty

    model = load_model(base_model).model
    expected = 0.0
    for i in range(len(model.convs) - 1):
        for c in range(model.convs[i].out_channels):
            parts = [model.convs[i + 1].weight[:, c]]
            if i == 0:
                parts += [model.convs[0].weight[c], model.convs[0].bias[c]]
            else:
                parts += [model.bns[i - 1].weight[c], model.bns[i - 1].bias[c]]
            expected += float(np.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in parts)))
    assert float(channel_penalty(model).detach()) == pytest.approx(expected, rel=1e-5)


def test_train_with_a_channel_penalty_logs_it_and_shrinks_whole_channels(tmp_path, dataset):
    from tgdpet.train.methods import channel_groups

    def group_norms(path) -> np.ndarray:
        model = load_model(path).model
        return np.concatenate([
            torch.sqrt(sum(t.detach().pow(2).reshape(t.shape[0], -1).sum(1) for t in group)).numpy()
            for group in channel_groups(model)
        ])  # fmt: skip

    runs = {}
    for lam in (0.0, 0.05):  # Adam moves a weight by about lr a step: 24 steps at 0.01 can empty a channel
        out = tmp_path / f"lam{lam}"
        res = CliRunner().invoke(main, ["train", str(dataset), "--out", str(out), "--preset", "tiny", "--device", "cpu",
                                        "--no-amp", "--no-progress", "--epochs", "3", "--patches-per-epoch", "128",
                                        "--batch-size", "16", "--patch-size", "16", "--lr", "0.01",
                                        "--channel-penalty", str(lam)])
        assert res.exit_code == 0, res.output
        runs[lam] = out
    assert yaml.safe_load((runs[0.05] / "config.yaml").read_text())["channel_penalty"] == 0.05
    rows = [json.loads(line) for line in (runs[0.05] / "metrics.jsonl").read_text().splitlines()]
    assert all(r["penalty"] > 0 for r in rows) and rows[-1]["penalty"] < rows[0]["penalty"]
    assert "penalty" not in json.loads((runs[0.0] / "metrics.jsonl").read_text().splitlines()[0])
    assert load_model(runs[0.05] / "last.safetensors").provenance["method"]["channel_penalty"] == 0.05
    plain, penalised = group_norms(runs[0.0] / "last.safetensors"), group_norms(runs[0.05] / "last.safetensors")
    assert penalised.sum() < 0.8 * plain.sum()
