"""The denoising fast path (tgdpet.infer) against a plain per-slice loop: the definition of the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import reference_denoise as reference
from helpers import rel_rms, trained_like_model

from tgdpet.errors import TgdpetError
from tgdpet.inputs import intensity_scale
from tgdpet.infer import BF16_TOLERANCE, Denoiser, denoise_array, fold_batchnorm

FP32_TOLERANCE = 1e-5


def pet_like_volume(shape=(9, 20, 17), seed: int = 0) -> np.ndarray:
    """Positive, skewed activity values in Bq/mL-like units (scale ~1000)."""
    return (np.random.default_rng(seed).gamma(2.0, 1.0, size=shape) * 1000).astype(np.float32)


def test_fp32_fast_path_matches_eager_reference():
    model, volume = trained_like_model(), pet_like_volume()
    expected = reference(model, volume)
    assert rel_rms(volume, expected) > 0.05  # the network really changes the image
    out = denoise_array(model, volume, device="cpu", precision="fp32")
    assert out.dtype == np.float32 and out.shape == volume.shape
    assert rel_rms(out, expected) < FP32_TOLERANCE


def test_bf16_fast_path_is_within_the_documented_tolerance():
    model, volume = trained_like_model(), pet_like_volume()
    expected = reference(model, volume)
    out = denoise_array(model, volume, device="cpu", precision="bf16")
    error = rel_rms(out, expected)
    assert FP32_TOLERANCE < error < BF16_TOLERANCE  # bf16 really ran, and stays within bounds


def test_edge_slices_are_centres_of_replicated_stacks():
    model, volume = trained_like_model(in_slices=5), pet_like_volume(shape=(6, 12, 10))
    s = intensity_scale(volume)
    v = volume / s
    explicit = {
        0: [v[0], v[0], v[0], v[1], v[2]],
        1: [v[0], v[0], v[1], v[2], v[3]],
        5: [v[3], v[4], v[5], v[5], v[5]],
    }
    out = denoise_array(model, volume, device="cpu", precision="fp32", batch_slices=4)
    with torch.no_grad():
        for k, stack in explicit.items():
            expected = model(torch.from_numpy(np.stack(stack))[None])[0, 2].numpy() * s
            assert rel_rms(out[k], expected) < FP32_TOLERANCE


def test_five_slice_model_matches_reference():
    model, volume = trained_like_model(in_slices=5, seed=1), pet_like_volume(shape=(7, 16, 18), seed=1)
    out = denoise_array(model, volume, device="cpu", precision="fp32")
    assert rel_rms(out, reference(model, volume)) < FP32_TOLERANCE


def test_batchnorm_folding_is_exact_and_leaves_the_model_alone():
    model = trained_like_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    x = torch.rand(4, 3, 16, 16) * 3
    with torch.no_grad():
        expected = model.eval()(x)
        got = folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert not any(p.requires_grad for p in folded.parameters())
    assert rel_rms(got.numpy(), expected.numpy()) < FP32_TOLERANCE
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batch_size_and_slab_boundaries_do_not_change_results(precision):
    model, volume = trained_like_model(), pet_like_volume(shape=(11, 14, 13))
    runs = [denoise_array(model, volume, device="cpu", precision=precision, batch_slices=b) for b in (1, 3, 4, 11, 32)]
    for out in runs[1:]:
        assert rel_rms(out, runs[0]) < FP32_TOLERANCE


def test_intensity_normalisation_makes_the_output_scale_with_the_input():
    model, volume = trained_like_model(), pet_like_volume()
    out = denoise_array(model, volume, device="cpu", precision="fp32")
    scaled = denoise_array(model, volume * 1000, device="cpu", precision="fp32")
    assert rel_rms(scaled, out * 1000) < FP32_TOLERANCE
    # Without normalisation the network (biases, ReLU) is not scale-free: normalisation is what does it.
    raw = denoise_array(model, volume / 1000, device="cpu", precision="fp32", normalize=False)
    raw_scaled = denoise_array(model, volume, device="cpu", precision="fp32", normalize=False)
    assert rel_rms(raw_scaled, raw * 1000) > 1e-2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused(bad):
    volume = pet_like_volume()
    volume[3, 5, 7] = bad
    with pytest.raises(TgdpetError, match="slice 3"):
        denoise_array(trained_like_model(), volume, device="cpu")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"precision": "fp16"}, "CUDA"),
        ({"precision": "fp64"}, "unknown precision"),
        ({"batch_slices": 0}, "at least 1"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(TgdpetError, match=match):
        Denoiser(trained_like_model(), device="cpu", **kwargs)


def test_a_two_dimensional_array_is_refused():
    with pytest.raises(TgdpetError, match="3-D"):
        denoise_array(trained_like_model(), pet_like_volume()[0], device="cpu")


def test_one_denoiser_serves_volumes_of_different_shapes(device):
    model = trained_like_model()
    denoiser = Denoiser(model, device=device, precision="fp32")
    for shape, seed in [((5, 12, 12), 2), ((8, 20, 9), 3), ((1, 6, 7), 4)]:
        volume = pet_like_volume(shape, seed)
        assert rel_rms(denoiser(volume), reference(model, volume)) < FP32_TOLERANCE


def test_automatic_precision_on_the_test_device(device):
    model, volume = trained_like_model(), pet_like_volume()
    out = denoise_array(model.to(device), volume, device=device)
    assert rel_rms(out, reference(model.cpu(), volume)) < BF16_TOLERANCE


def test_compiled_fast_path_matches_reference():
    model, volume = trained_like_model(), pet_like_volume(shape=(5, 16, 16))
    out = denoise_array(model, volume, device="cpu", precision="fp32", compile=True)
    assert rel_rms(out, reference(model, volume)) < FP32_TOLERANCE
