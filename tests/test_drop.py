"""The kernel-drop study (paper Fig. 4): what zeroing the kernels KSE flags does to a network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import alternating_masks, random_batch, stats_model

from tgdpet.drop import drop_kernels, drop_study, relative_rms_change, zero_channels
from tgdpet.models import count_parameters


def test_zero_channels_removes_feature_maps_exactly():
    model = stats_model().eval()
    masks = alternating_masks(model)
    dropped = zero_channels(model, masks)
    captured = {}
    for j, bn in enumerate(dropped.bns):
        bn.register_forward_hook(lambda m, i, o, j=j: captured.__setitem__(j, o))
    relu1 = {}
    dropped.convs[0].register_forward_hook(lambda m, i, o: relu1.__setitem__(0, torch.relu(o)))
    x, _ = random_batch()
    with torch.no_grad():
        dropped(x)
    assert torch.count_nonzero(relu1[0][:, ~masks[0]]) > 0 and torch.count_nonzero(relu1[0][:, masks[0]]) == 0
    for j, out in captured.items():
        assert torch.count_nonzero(out[:, masks[j + 1]]) == 0
    assert torch.equal(model.convs[0].weight, stats_model().convs[0].weight)  # the original is untouched


def test_drop_fraction_against_independent_count():
    model = stats_model()
    for phi in (0.3, 0.6, 1.0):
        dropped, fraction = drop_kernels(model, phi)
        zeroed = sum(
            int(((p != 0) & (q == 0)).sum()) for p, q in zip(model.parameters(), dropped.parameters())
        )
        assert fraction == pytest.approx(zeroed / count_parameters(model))
    assert drop_kernels(model, 0.0)[1] == 0.0


def test_relative_rms_change():
    ref = np.array([3.0, 4.0])  # RMS = sqrt(12.5)
    assert relative_rms_change(ref, ref) == 0.0
    assert relative_rms_change(ref, ref + np.array([1.0, -1.0])) == pytest.approx(1 / np.sqrt(12.5))
    assert relative_rms_change(np.zeros(2), np.zeros(2)) == 0.0


def test_drop_study_output_change_grows_from_zero():
    model = stats_model().eval()
    vol = np.random.default_rng(1).gamma(2.0, 3.0, size=(4, 12, 12)).astype(np.float32)

    def denoise(net):  # the three slices around each slice, edges repeated: what a 2.5D denoiser sees
        padded = np.concatenate([vol[:1], vol, vol[-1:]])
        x = torch.from_numpy(np.stack([padded[z : z + 3] for z in range(len(vol))]))
        with torch.no_grad():
            return net(x)[:, 0].numpy()

    reference, results = drop_study(model, [0.0, 0.5, 1.0], denoise)
    assert np.array_equal(reference, denoise(model))
    assert [r.phi for r in results] == [0.0, 0.5, 1.0]
    assert results[0].fraction_dropped == 0.0 and results[0].output_change == 0.0
    for r in results:
        out = denoise(drop_kernels(model, r.phi)[0])
        assert np.array_equal(r.output, out)
        rms = np.sqrt(np.mean((out.astype(np.float64) - reference) ** 2) / np.mean(reference.astype(np.float64) ** 2))
        assert r.output_change == pytest.approx(rms)
    assert results[2].output_change > 0.0
    fractions = [r.fraction_dropped for r in results]
    assert fractions == sorted(fractions)
    reference, (only,) = drop_study(model, [0.3])
    assert reference is None and only.output_change is None and only.output is None
    assert only.to_dict() == {"phi": 0.3, "fraction_dropped": drop_kernels(model, 0.3)[1], "output_change": None}
