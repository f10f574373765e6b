"""n2n-online accepts two halves of one scan and refuses anything else, by measured criteria."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_volume

from tgdpet.errors import TgdpetError
from tgdpet.simulate.dataset import SimulationConfig, StudySpec, simulate_study
from tgdpet.train.n2n import (
    MAX_HALVES_MEAN_RATIO,
    MIN_HALVES_CORRELATION,
    check_distinct_halves,
    check_full,
    check_halves,
    halves_agreement,
)


def test_the_correlation_is_that_of_block_means():
    """By construction: 4^3 blocks of constant activity U(5, 15) plus N(0, 4^2) noise per voxel and half.

    Voxels correlate at var(signal) / (var(signal) + 16) ~ 0.34; block means, whose noise variance is
    16 / 64, at var(signal) / (var(signal) + 0.25) ~ 0.97: what two halves of one scan share survives.
    """
    rng = np.random.default_rng(0)
    blocks = rng.uniform(5.0, 15.0, size=(6, 6, 6))
    signal = np.kron(blocks, np.ones((4, 4, 4)))
    h1, h2 = (signal + rng.normal(0, 4.0, signal.shape) for _ in range(2))
    agreement = halves_agreement(h1.astype(np.float32), h2.astype(np.float32))
    assert agreement.correlation == pytest.approx(blocks.var() / (blocks.var() + 16 / 64), abs=0.02)
    assert np.corrcoef(h1.ravel(), h2.ravel())[0, 1] == pytest.approx(blocks.var() / (blocks.var() + 16), abs=0.03)
    assert 1.0 <= agreement.mean_ratio < 1.01  # two noise draws of one activity


def test_same_halves_pass_and_scaled_or_shifted_ones_do_not():
    one = make_volume(shape=(16, 16, 16))
    check_halves(one, one.with_data(one.data * np.float32(1.01)))  # 1 % apart: counting noise
    with pytest.raises(TgdpetError, match="differ in mean uptake by a factor 1.50"):
        check_halves(one, one.with_data(one.data * np.float32(1.5)))
    shifted = make_volume(shape=(16, 16, 16), origin=(0.0, 0.0, 4.0))
    with pytest.raises(TgdpetError, match="affines differ"):
        check_halves(one, shifted)


def test_the_full_image_must_be_on_the_halves_grid_to_a_thousandth_of_a_mm():
    half = make_volume(shape=(16, 16, 16))
    check_full(make_volume(shape=(16, 16, 16), origin=(-15.0, -20.0, -10.0004)), half)  # rounding in a header
    with pytest.raises(TgdpetError, match="another position or voxel size"):
        check_full(make_volume(shape=(16, 16, 16), spacing=(2.0, 2.5, 3.01)), half)
    with pytest.raises(TgdpetError, match=r"another grid than the halves \(\(12, 16, 16\) and \(16, 16, 16\)"):
        check_full(make_volume(shape=(12, 16, 16)), half)


def test_one_image_twice_is_not_two_halves_though_it_passes_the_similarity_check():
    one = make_volume(shape=(16, 16, 16))
    check_halves(one, one.with_data(one.data.copy()))  # correlation 1, mean ratio 1
    with pytest.raises(TgdpetError, match="the two halves are the same image"):
        check_distinct_halves(one, one.with_data(one.data.copy()))
    check_distinct_halves(one, one.with_data(np.nextafter(one.data, np.float32(np.inf))))  # any noise differs


@pytest.fixture(scope="module")
def simulated_halves():
    """Halves of two normal-BMI studies (the most alike patients the simulator makes), 60 s each, protocol v2."""
    specs = (StudySpec("train", "normal", lesions=True, halves=True),) * 2
    cfg = SimulationConfig(studies=specs, protocols=("v2",), levels_s=(60.0,), seed=5, device="cpu", progress=False)
    halves = []
    for i, spec in enumerate(specs):
        study = simulate_study(spec, cfg, index=i)
        images = [im.cpu().numpy() for im, scan in zip(study.images["v2"], study.scans) if scan.role == "half"]
        halves.append([make_volume(shape=images[0].shape).with_data(h) for h in images])  # one grid for all
    return halves


@pytest.mark.slow
def test_halves_of_one_simulated_study_pass(simulated_halves):
    for h1, h2 in simulated_halves:
        check_halves(h1, h2)
        agreement = halves_agreement(h1.data, h2.data)
        assert agreement.correlation > MIN_HALVES_CORRELATION and agreement.mean_ratio < MAX_HALVES_MEAN_RATIO


@pytest.mark.slow
def test_halves_of_two_simulated_patients_are_refused(simulated_halves):
    (a1, _), (_, b2) = simulated_halves
    with pytest.raises(TgdpetError, match="do not look like one scan|differ in mean uptake"):
        check_halves(a1, b2)
