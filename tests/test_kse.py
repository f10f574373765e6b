"""KSE scores against an independent loop implementation, hand-worked cases and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tgdpet.errors import TgdpetError
from tgdpet.kse import channel_parameter_count, kse_scores, score_network, sparsity_and_entropy
from tgdpet.models import build_model, count_parameters


def _min_max(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def reference_sparsity_entropy(w: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Straight from the definition, one kernel pair at a time, in plain Python floats."""
    n_out, c_in = w.shape[:2]
    kk = min(k, n_out - 1)
    s = np.zeros(c_in)
    e = np.zeros(c_in)
    for c in range(c_in):
        kernels = [[float(v) for v in w[n, c].ravel()] for n in range(n_out)]
        s[c] = sum(abs(v) for kern in kernels for v in kern)
        dm = []
        for i in range(n_out):
            dists = sorted(
                math.sqrt(sum((a - b) ** 2 for a, b in zip(kernels[i], kernels[j]))) for j in range(n_out) if j != i
            )
            dm.append(sum(dists[:kk]))
        total = sum(dm)
        if total > 0:
            e[c] = -sum((d / total) * math.log2(d / total) for d in dm if d > 0)
    return s, e


def reference_kse(w: np.ndarray, k: int = 5, alpha: float = 1.0) -> np.ndarray:
    s, e = reference_sparsity_entropy(w, k)
    return _min_max(np.sqrt(_min_max(s) / (1 + alpha * _min_max(e))))


@pytest.mark.parametrize("shape", [(8, 6, 3, 3), (3, 7, 3, 3), (6, 5, 3, 3), (12, 4, 1, 1), (5, 3, 3, 3)])
def test_matches_loop_reference(shape):
    w = np.random.default_rng(sum(shape)).normal(size=shape)
    ours = kse_scores(w)
    assert ours.dtype == torch.float64 and ours.shape == (shape[1],)
    np.testing.assert_allclose(ours.numpy(), reference_kse(w), rtol=0, atol=1e-12)
    s, e = sparsity_and_entropy(w)
    s_ref, e_ref = reference_sparsity_entropy(w)
    np.testing.assert_allclose(s.numpy(), s_ref, rtol=1e-13)
    np.testing.assert_allclose(e.numpy(), e_ref, rtol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_k_and_alpha_match_reference(k):
    w = np.random.default_rng(k).normal(size=(7, 5, 3, 3))
    np.testing.assert_allclose(kse_scores(w, k=k, alpha=0.5).numpy(), reference_kse(w, k=k, alpha=0.5), atol=1e-12)


def test_two_kernels_have_exactly_one_bit_of_entropy():
    # N_out = 2: k clamps to 1 and each kernel's only neighbour is the other, so
    # dm = (d, d), p = (1/2, 1/2) and e = 1 bit, whatever the distance d.
    w = torch.tensor([[[[0.0, 3.0]]], [[[4.0, 0.0]]]])  # (2, 1, 1, 2); d = 5
    s, e = sparsity_and_entropy(w)
    assert s.tolist() == [7.0]
    assert e.tolist() == [1.0]


def test_hand_worked_example():
    # 1x1 kernels, N_out = 3 (k clamps to 2: dm_i = distances to both others), C_in = 3.
    # channel 0: kernels 1, 0, 0 -> s = 1; dm = (1+1, 1+0, 1+0) = (2, 1, 1), p = (1/2, 1/4, 1/4), e = 1.5 bits
    # channel 1: kernels 2, 2, 2 -> s = 6; dm = (0, 0, 0) -> e = 0
    # channel 2: kernels 0, 1, 2 -> s = 3; dm = (1+2, 1+1, 2+1) = (3, 2, 3), p = (3/8, 1/4, 3/8),
    #            e = 2 * 3/8 * log2(8/3) + 1/4 * 2 = 2.75 - 0.75 * log2(3) ~= 1.5613
    # s~ = ((1-1)/5, (6-1)/5, (3-1)/5) = (0, 1, 0.4); e~ = (1.5/e2, 0, 1)
    # v = sqrt(s~ / (1 + e~)) = (0, 1, sqrt(0.4 / 2)) -> already min 0, max 1, so KSE = v.
    w = torch.tensor([[1.0, 2.0, 0.0], [0.0, 2.0, 1.0], [0.0, 2.0, 2.0]]).reshape(3, 3, 1, 1)
    s, e = sparsity_and_entropy(w)
    assert s.tolist() == [1.0, 6.0, 3.0]
    e2 = 2.75 - 0.75 * math.log2(3)
    np.testing.assert_allclose(e.numpy(), [1.5, 0.0, e2], rtol=1e-15, atol=0)
    np.testing.assert_allclose(kse_scores(w).numpy(), [0.0, 1.0, math.sqrt(0.2)], rtol=1e-15, atol=0)
    # alpha = 0 ignores entropy: KSE = min-max(sqrt(s~)) = (0, 1, sqrt(0.4)).
    np.testing.assert_allclose(kse_scores(w, alpha=0.0).numpy(), [0.0, 1.0, math.sqrt(0.4)], rtol=1e-15)


def test_reference_code_layout_bug_gives_different_entropy():
    # The published code reshapes an (N, C, D) array to (C, N, D) instead of
    # transposing it, so "channel c" is a mix of kernels of several channels.
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 4, 3, 3)) * rng.uniform(0.1, 3.0, size=(6, 4, 1, 1))
    n_out, c_in = w.shape[:2]
    bugged = w.reshape(n_out, c_in, -1).reshape(c_in, n_out, -1)[..., None]  # (C, N, D, 1) read as W[:, c]
    _, e_bug = reference_sparsity_entropy(bugged.transpose(1, 0, 2, 3))
    _, e_ours = sparsity_and_entropy(w)
    _, e_ref = reference_sparsity_entropy(w)
    np.testing.assert_allclose(e_ours.numpy(), e_ref, rtol=1e-12)
    assert np.abs(e_ours.numpy() - e_bug).max() > 1e-3
    s_ref, _ = reference_sparsity_entropy(w)
    kse_bug = _min_max(np.sqrt(_min_max(s_ref) / (1 + _min_max(e_bug))))
    assert np.abs(kse_scores(w).numpy() - kse_bug).max() > 1e-3


def test_permuting_output_kernels_does_not_change_scores():
    w = torch.randn(9, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(kse_scores(w[perm]), kse_scores(w), rtol=0, atol=1e-12)


def test_permuting_input_channels_permutes_scores_and_scale_is_ignored():
    w = torch.randn(9, 6, 3, 3, generator=torch.Generator().manual_seed(2))
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    base = kse_scores(w)
    torch.testing.assert_close(kse_scores(w[:, perm]), base[perm], rtol=0, atol=1e-12)
    # Scaling every weight scales s and dm alike: normalised s and p, hence KSE, are unchanged.
    torch.testing.assert_close(kse_scores(w.double() * 7.5), base, rtol=0, atol=1e-12)


def test_single_output_kernel_has_zero_density_and_entropy():
    w = torch.tensor([1.0, -2.0, 0.5, 4.0]).reshape(1, 4, 1, 1)
    s, e = sparsity_and_entropy(w)
    assert e.tolist() == [0.0] * 4
    # KSE = min-max(sqrt(s~)), s = (1, 2, 0.5, 4) -> s~ = (1/7, 3/7, 0, 1).
    np.testing.assert_allclose(kse_scores(w).numpy(), np.sqrt([1 / 7, 3 / 7, 0, 1]), rtol=1e-15)


@pytest.mark.parametrize("n_out", [2, 3, 4, 5, 6])
def test_small_n_out_clamps_k(n_out):
    w = np.random.default_rng(n_out).normal(size=(n_out, 5, 3, 3))
    np.testing.assert_allclose(kse_scores(w, k=5).numpy(), kse_scores(w, k=n_out - 1).numpy(), atol=0)
    np.testing.assert_allclose(kse_scores(w).numpy(), reference_kse(w), atol=1e-12)


def test_identical_kernels_have_zero_entropy_and_finite_scores():
    # Every channel's kernels are identical (zero density): e = 0, so KSE = min-max(sqrt(s~)).
    per_channel = torch.tensor([0.5, -1.0, 2.0]).reshape(1, 3, 1, 1)
    w = per_channel.expand(5, 3, 3, 3).clone()
    s, e = sparsity_and_entropy(w)
    assert e.tolist() == [0.0, 0.0, 0.0]
    # s = 5 * 9 * |value| = (22.5, 45, 90) -> s~ = (0, 1/3, 1)
    np.testing.assert_allclose(kse_scores(w).numpy(), [0.0, math.sqrt(1 / 3), 1.0], rtol=1e-15)


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_constant_weights_score_zero_not_nan(value):
    w = torch.full((6, 4, 3, 3), value)
    scores = kse_scores(w)
    assert torch.isfinite(scores).all()
    assert scores.tolist() == [0.0] * 4


def test_one_input_channel_scores_zero():
    # Min-max of a single value has no spread: the lone channel scores 0 (documented).
    assert kse_scores(torch.randn(8, 1, 3, 3)).tolist() == [0.0]


def test_three_input_channels_like_conv1():
    w = np.random.default_rng(11).normal(size=(8, 3, 3, 3))
    scores = kse_scores(w)
    np.testing.assert_allclose(scores.numpy(), reference_kse(w), atol=1e-12)
    assert scores.min() == 0.0 and scores.max() == 1.0


def test_inputs_numpy_float32_and_torch_agree():
    w32 = torch.randn(8, 5, 3, 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(kse_scores(w32), kse_scores(w32.numpy()))
    assert torch.equal(kse_scores(w32), kse_scores(w32.double()))


def test_rejects_bad_weights():
    with pytest.raises(ValueError, match="shape"):
        kse_scores(torch.randn(4, 4))
    with pytest.raises(ValueError, match="NaN"):
        kse_scores(torch.tensor([1.0, float("nan")]).reshape(2, 1, 1, 1))
    with pytest.raises(ValueError, match="k"):
        kse_scores(torch.randn(4, 4, 3, 3), k=0)


def test_score_network_scores_outputs_of_previous_layer():
    model = build_model("tiny")
    layers = score_network(model, phi=0.4)
    assert [ls.layer for ls in layers] == list(range(1, len(model.convs)))
    assert [ls.source_name for ls in layers] == [f"conv{i}" for i in range(1, len(model.convs))]
    for ls in layers:
        assert torch.equal(ls.scores, kse_scores(model.convs[ls.layer].weight))
        assert torch.equal(ls.meaningless, ls.scores < 0.4)
        assert ls.channels == model.convs[ls.source].out_channels
    # Per-channel parameters: kernel + bias, plus BN gamma and beta where a BN follows.
    assert layers[0].params_per_channel == 3 * 9 + 1  # conv1: no BN
    assert layers[1].params_per_channel == 8 * 9 + 1 + 2
    total = sum(channel_parameter_count(model, i) * c.out_channels for i, c in enumerate(model.convs))
    assert total == count_parameters(model)


@pytest.mark.parametrize("phi", [-0.1, 1.5, float("nan")])
def test_score_network_refuses_phi_outside_unit_interval(phi):
    with pytest.raises(TgdpetError, match="phi"):
        score_network(build_model("tiny"), phi)


# --------------------------------------------------------------------------- tgdpet score-kse


@pytest.fixture
def model_file(tmp_path):
    from tgdpet.checkpoint import save_model

    torch.manual_seed(0)
    model = build_model("tiny")
    path = tmp_path / "model.safetensors"
    save_model(path, model, preset="tiny")
    return path, model


def _run(*args):
    from click.testing import CliRunner

    from tgdpet.cli import main

    return CliRunner().invoke(main, ["score-kse", *map(str, args)])


def _expected_counts(model, masks, read_kernels: bool) -> list[int]:
    """Per conv layer, the parameters TGD trains, worked out by hand from the layer shapes.

    A retrained channel trains its kernel (in x 3 x 3), bias and, with a BatchNorm, gamma and beta;
    with read kernels retrained, every frozen channel also trains the 3 x 3 slices that read a
    retrained map of the layer before.
    """
    counts = []
    for i, conv in enumerate(model.convs):
        retrained = int(masks[i].sum())
        has_bn = i not in (0, len(model.convs) - 1)
        own = retrained * (conv.in_channels * 9 + 1 + (2 if has_bn else 0))
        reads = (conv.out_channels - retrained) * int(masks[i - 1].sum()) * 9 if read_kernels and i > 0 else 0
        counts.append(own + reads)
    return counts


@pytest.mark.parametrize("read_kernels", ["retrain", "freeze"])
def test_cli_table_counts_what_tgd_finetune_trains(model_file, read_kernels):
    from tgdpet.tgd import attach, build_masks

    path, model = model_file
    result = _run(path, "--phi", "0.5", "--read-kernels", read_kernels)
    assert result.exit_code == 0, result.output
    masks = build_masks(model, 0.5)
    expected = _expected_counts(model, masks, read_kernels == "retrain")
    assert sum(expected) > 0 and masks[len(model.convs) - 2].any()  # the last layer reads a retrained map
    lines = result.output.splitlines()
    assert f"read kernels: {read_kernels}" in lines[0]
    for i, conv in enumerate(model.convs):
        row = next(line for line in lines if line.startswith(f"conv{i + 1} "))
        assert row.split()[1] == str(conv.out_channels)
        assert row.split()[3] == f"{expected[i]:,}"
    total = next(line for line in lines if line.startswith("total"))
    assert f"{sum(expected):,}" in total and f"{100 * sum(expected) / count_parameters(model):.1f}%" in total
    with attach(model, masks, read_kernels=read_kernels) as engine:  # what fine-tuning would then train
        assert engine.trainable_parameters() == sum(expected)


def test_cli_json_and_conv1_freeze(model_file):
    import json

    path, model = model_file
    result = _run(path, "--phi", "1.0", "--conv1", "freeze", "--read-kernels", "freeze", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    first, last = report["layers"][0], report["layers"][-1]
    assert report["conv1"] == "freeze" and report["read_kernels"] == "freeze" and first["retrained_parameters"] == 0
    assert first["meaningless_channels"] == model.convs[0].out_channels - 1  # all but the top-scored one
    assert last["meaningless_channels"] is None and last["retrained_parameters"] == 0
    assert first["kse"] == kse_scores(model.convs[1].weight).tolist()
    assert report["total"]["parameters"] == count_parameters(model)
    assert report["total"]["retrained_parameters"] == sum(layer["retrained_parameters"] for layer in report["layers"])


def test_cli_drop_study_with_volume(model_file, tmp_path):
    import json

    from tgdpet.drop import drop_kernels

    from tgdpet.io import Volume, write_volume

    path, model = model_file
    voxels = np.random.default_rng(0).gamma(2.0, 3.0, size=(4, 16, 16))
    vol = write_volume(Volume(voxels, np.eye(4)), tmp_path / "v.nii")
    result = _run(path, "--phis", "0,0.6", "--volume", vol, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    drop = json.loads(result.output)["drop"]
    assert [d["phi"] for d in drop] == [0.0, 0.6]
    assert drop[0]["output_change"] == 0.0 and drop[1]["output_change"] > 0
    assert drop[1]["fraction_dropped"] == drop_kernels(model, 0.6)[1]
    table = _run(path, "--drop")
    assert table.exit_code == 0 and "Kernel-drop study" in table.output and "--volume" in table.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--phi", "1.5"], "phi must be between 0 and 1"),
        (["--drop", "--phis", "0.3,-1"], "phi must be between 0 and 1"),
        (["--drop", "--phis", "0.3,abc"], "--phis"),
    ],
)
def test_cli_bad_thresholds_exit_2(model_file, args, message):
    path, _ = model_file
    result = _run(path, *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_cli_bad_model_file_exits_2(tmp_path):
    result = _run(tmp_path / "missing.safetensors")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_cli_refuses_a_volume_it_cannot_read(model_file, tmp_path):
    path, _ = model_file
    bad = tmp_path / "vol.npy"
    np.save(bad, np.zeros((4, 8, 8), np.float32))
    result = _run(path, "--volume", bad)
    assert result.exit_code == 2 and "Traceback" not in result.output
