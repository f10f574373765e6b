"""scripts/gaussian_baseline.py: its filter is the Gaussian it says, so the baseline it prints is one."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gaussian_baseline.py"


@pytest.fixture(scope="module")
def baseline():
    sys.path.insert(0, str(SCRIPT.parent))  # as ``python scripts/...`` has it: the scripts' own _user_errors
    spec = importlib.util.spec_from_file_location("gaussian_baseline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_impulse_response_is_the_sampled_gaussian(baseline):
    sigma = (1.0, 1.5, 2.5)  # voxels along z, y, x
    volume = np.zeros((21, 25, 31), np.float32)
    volume[10, 12, 15] = 1.0
    out = baseline.gaussian(volume, sigma)
    # Worked independently: the outer product of three sampled Gaussians centred on the impulse, cut at
    # 3 sigma (rounded up to whole voxels) and normalised.
    axes = []
    for n, centre, s in zip(volume.shape, (10, 12, 15), sigma):
        d = np.arange(n) - centre
        g = np.exp(-(d**2) / (2 * s**2)) * (np.abs(d) <= math.ceil(3 * s))
        axes.append(g / g.sum())
    expected = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)


def test_fwhm_conversion(baseline):
    assert baseline.FWHM_PER_SIGMA == pytest.approx(2.3548, abs=1e-4)
    assert 9.4 / baseline.FWHM_PER_SIGMA / 4.0 == pytest.approx(1.0, abs=3e-3)  # 9.4 mm at 4 mm voxels: sigma 1 voxel


@pytest.mark.parametrize(
    ("args", "message"),
    [(["nowhere"], "Error: no dataset manifest at nowhere"), ([".", "--fwhm", "4.x"], "'4.x' is not a list of positive")],
)
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())  # nothing written


ROW = re.compile(r"^ +([0-9.]+) +([-0-9.]+) +([0-9.]+) +([0-9.]+)$", re.M)


def test_each_filter_is_scored_against_the_input_with_a_paired_standard_error(tmp_path):
    """A filter too narrow to change anything reads the input's bias with a zero paired SE; a wide one does not."""
    sim = [sys.executable, "-m", "tgdpet.cli", "simulate", str(tmp_path / "sim"), "--studies", "1", "--size", "32",
           "--slices", "36", "--protocols", "v1", "--ood", "none", "--realisations", "4", "--seed", "3",
           "--device", "cpu", "--no-progress"]  # fmt: skip
    assert subprocess.run(sim, capture_output=True, text=True, timeout=600).returncode == 0
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "sim" / "v1"), "--fwhm", "0.1,40"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    blocks = done.stdout.split("study ")[1:]
    assert len(blocks) == 3, done.stdout  # the low-, normal- and high-BMI test studies
    for block in blocks:
        input_bias = float(re.search(r"^  input +([-0-9.]+) ", block, re.M).group(1))
        rows = {float(f): (float(b), float(se), float(cov)) for f, b, se, cov in ROW.findall(block)}
        assert set(rows) == {0.1, 40.0}, block
        assert rows[0.1][:2] == (input_bias, 0.0)  # sigma under 0.01 voxel: every tap but the centre is 0
        bias, se, _ = rows[40.0]  # 40 mm FWHM: the tumour is smeared out, each realisation its own way
        assert bias < input_bias - 5 and se > 0.0
