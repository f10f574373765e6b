"""Image-quality figures of merit for PET denoising, as pure functions on arrays.

The paper's supplement (eq. 6-7) measures a denoiser on R i.i.d. short-scan
realisations of one study whose long scan is the reference T:

- eq. 6, lesion ensemble bias (%) = (1/R) sum_r (mu_r^L - T_L) / T_L * 100,
  with mu_r^L the mean inside the lesion in realisation r and T_L the mean
  of the reference inside the lesion;
- eq. 7, liver CoV (%) = (1/N) sum_{j in liver} sigma_j / mu_liver * 100,
  with sigma_j the ensemble standard deviation over the R realisations at
  voxel j and mu_liver the mean over the liver VOI of the ensemble mean.

Bias measures how much a denoiser changes a small hot structure's uptake;
CoV measures how much noise is left in a uniform organ. The two pull in
opposite directions, which is why the paper reports them together.

Around them: the standard error of a denoiser's ensemble bias, paired with
its inputs (R region means leave some noise in their average), bias against
the phantom's true activity (only a simulator knows it), PSNR and SSIM
against the reference, and a hallucination score inside out-of-distribution
structures (catheter, hot bladder).

Arrays are ``(z, y, x)`` volumes, realisation stacks ``(R, z, y, x)``, masks
boolean (or 0/1) volumes on the same grid. Every figure is computed in
float64 so that whole-body sums do not lose precision. Misuse (shapes that
disagree, an empty region, a zero-mean reference) raises ``ValueError``;
callers that handle user data turn it into a user error before calling.
"""

from __future__ import annotations

import math

import numpy as np

#: SSIM constants of Wang et al., IEEE TIP 13(4), 2004: an 11-tap Gaussian
#: window of standard deviation 1.5 and K1 = 0.01, K2 = 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _region(mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Validate a region mask against a volume shape and return it as bool."""
    m = np.asarray(mask).astype(bool)
    if m.shape != tuple(shape):
        raise ValueError(f"the {name} mask has shape {m.shape} but the images have shape {tuple(shape)}.")
    if not m.any():
        raise ValueError(f"the {name} mask is empty.")
    return m


def _realisation_stack(realisations: np.ndarray) -> np.ndarray:
    r = _as_f64(realisations)
    if r.ndim < 2:
        raise ValueError(f"realisations must be stacked as (R, z, y, x), got shape {r.shape}.")
    return r


def _relative_region_errors(realisations: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(mu_r - T) / T * 100`` for every realisation ``r``: the terms eq. 6 averages."""
    r = _realisation_stack(realisations)
    ref = _as_f64(reference)
    if ref.shape != r.shape[1:]:
        raise ValueError(f"the reference has shape {ref.shape} but each realisation has shape {r.shape[1:]}.")
    m = _region(mask, ref.shape, "region")
    t = ref[m].mean()
    if t == 0:
        raise ValueError("the reference mean inside the region is 0, so a relative bias is undefined.")
    return (r[:, m].mean(axis=1) - t) / t * 100.0


def ensemble_region_bias(realisations: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """Ensemble bias (%) of the region means of ``realisations`` against ``reference``.

    ``(1/R) sum_r (mu_r - T) / T * 100`` with ``mu_r`` the mean of realisation
    ``r`` inside ``mask`` and ``T`` the mean of ``reference`` inside ``mask``
    (supplement eq. 6). Averaging the signed per-realisation errors keeps the
    systematic part and lets the noise cancel, which is what "ensemble" bias
    means.
    """
    return float(np.mean(_relative_region_errors(realisations, reference, mask)))


def paired_bias_standard_error(
    realisations: np.ndarray, inputs: np.ndarray, reference: np.ndarray, mask: np.ndarray
) -> float:
    """Standard error (percentage points) of a denoiser's ensemble bias relative to its inputs'.

    ``std_r((mu_r - nu_r) / T * 100) / sqrt(R)``: ``mu_r`` and ``nu_r`` the
    region means of realisation ``r`` denoised and as it came, ``T`` the
    reference's, the standard deviation with ``ddof=1``. The difference of
    the two ensemble biases (eq. 6) is the mean of these terms, so this is its
    standard error, and the R independent realisations are what it is
    estimated from. Why paired: in the paper's design the realisations are
    disjoint parts of the reference scan, so their own noise cancels, to
    first order, in their ensemble mean, while what a denoiser does to each
    realisation does not cancel; the spread of the biases themselves over
    sqrt(R) would count noise that cancels (on the simulator's high-BMI test
    studies about three times this figure). It is the standard error given
    the scan: it says how well R realisations pin down what the denoiser did
    to that scan. It leaves out how the inputs' own ensemble bias moves from
    one scan of the same patient to the next (OSEM's count-dependence is not
    the same draw each time): a high-BMI simulated study scanned 8 times
    spread its bias 1.5 times this figure (docs/builtin-model.md, "Scanned
    again"). Where the realisations are independent scans, the inputs' own
    standard error adds to it too. Needs R >= 2.
    """
    if np.shape(inputs) != np.shape(realisations):
        raise ValueError(f"the inputs have shape {np.shape(inputs)} but the realisations {np.shape(realisations)}.")
    errors = _relative_region_errors(realisations, reference, mask) - _relative_region_errors(inputs, reference, mask)
    if len(errors) < 2:
        raise ValueError("a standard error needs at least 2 realisations.")
    return float(np.std(errors, ddof=1) / math.sqrt(len(errors)))


def lesion_ensemble_bias(realisations: np.ndarray, reference: np.ndarray, lesion_mask: np.ndarray) -> float:
    """Lesion ensemble bias (%) against the long-scan reference (supplement eq. 6).

    ``realisations`` is ``(R, z, y, x)``: R i.i.d. short-scan images (denoised
    or not); ``reference`` is the long scan ``T``. Negative values mean the
    lesion's mean uptake was lost, the typical failure of an over-smoothing
    denoiser.
    """
    return ensemble_region_bias(realisations, reference, lesion_mask)


def bias_vs_truth(realisations: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Ensemble bias (%) in a region against the phantom's true activity.

    Same formula as :func:`lesion_ensemble_bias` with the true activity map in
    place of the long scan. Only a simulation knows the truth; it adds the
    bias of the reconstruction itself (partial volume, convergence), which the
    paper's bias against the long scan deliberately leaves out. ``truth`` must
    be on the image grid, in the image's units.
    """
    return ensemble_region_bias(realisations, truth, mask)


def liver_cov(realisations: np.ndarray, liver_mask: np.ndarray) -> float:
    """Liver coefficient of variation (%) across realisations (supplement eq. 7).

    ``(1/N) sum_{j in liver} sigma_j / mu * 100`` where ``sigma_j`` is the
    standard deviation at voxel ``j`` over the R realisations and ``mu`` the
    mean over the liver of the ensemble-mean image. The standard deviation is
    the unbiased-variance one (``ddof=1``): with the paper's R = 10 the
    population one would read 5 % low. Measuring the spread *across
    realisations* rather than across voxels of one image counts only noise,
    not the liver's real texture.
    """
    r = _realisation_stack(realisations)
    if r.shape[0] < 2:
        raise ValueError(f"a CoV across realisations needs at least 2 realisations, got {r.shape[0]}.")
    m = _region(liver_mask, r.shape[1:], "liver")
    voxels = r[:, m]  # (R, N)
    mu = voxels.mean()
    if mu == 0:
        raise ValueError("the mean inside the liver is 0, so a coefficient of variation is undefined.")
    sigma = voxels.std(axis=0, ddof=1)
    return float(sigma.mean() / mu * 100.0)


def _same_shape(img: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_f64(img), _as_f64(ref)
    if a.shape != b.shape:
        raise ValueError(f"the image has shape {a.shape} but the reference has shape {b.shape}.")
    return a, b


def _data_range(ref: np.ndarray, data_range: float | None) -> float:
    """The dynamic range ``L`` of PSNR and SSIM: given, or the reference's max - min."""
    L = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    if not L > 0:
        raise ValueError(f"the data range must be positive, got {L}; give data_range explicitly.")
    return L


def psnr(img: np.ndarray, ref: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(L^2 / MSE)``.

    ``L`` defaults to the reference's ``max - min``, so the figure does not
    depend on the image units. Identical images give ``inf``.
    """
    a, b = _same_shape(img, ref)
    L = _data_range(b, data_range)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else float(10.0 * np.log10(L * L / mse))


def _gaussian_taps(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_filter_valid(x: np.ndarray, taps: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Separable Gaussian filter along ``axes``, keeping only the 'valid' part.

    Only windows that lie entirely inside the image are kept, as in Wang et
    al.'s reference code, so no padding rule leaks into the score. Each axis
    is a weighted sum of shifted views: vectorised, float64, and faster than
    a float64 convolution.
    """
    n_taps = taps.size
    for axis in axes:
        moved = np.moveaxis(x, axis, 0)
        n = moved.shape[0] - n_taps + 1
        out = taps[0] * moved[:n]
        for k in range(1, n_taps):
            out += taps[k] * moved[k : k + n]
        x = np.moveaxis(out, 0, axis)
    return x


def ssim(img: np.ndarray, ref: np.ndarray, data_range: float | None = None, *, dims: int = 2) -> float:
    """Mean structural similarity (Wang et al. 2004) of ``img`` against ``ref``.

    ``dims=2`` (default) scores every axial slice with a 2D 11x11 Gaussian
    window (sigma 1.5) and averages over all valid windows of all slices:
    PET slices are often thicker than the in-plane pixels, and the denoiser
    is 2.5D. ``dims=3`` uses an 11x11x11 window over the volume. Constants
    K1 = 0.01, K2 = 0.03 with ``L`` = ``data_range`` (default: the
    reference's ``max - min``); local statistics use the Gaussian-weighted
    (population) variance of the paper, and only windows entirely inside the
    image count. Returns 1 for identical images.
    """
    a, b = _same_shape(img, ref)
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 (per slice) or 3 (volume), got {dims}.")
    if a.ndim < dims:
        raise ValueError(f"a {dims}D SSIM needs an image of at least {dims} dimensions, got shape {a.shape}.")
    if min(a.shape[-dims:]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW} voxels along each of the last {dims} axes, got shape {a.shape}."
        )
    L = _data_range(b, data_range)
    c1, c2 = (SSIM_K1 * L) ** 2, (SSIM_K2 * L) ** 2
    axes = tuple(range(a.ndim - dims, a.ndim))
    taps = _gaussian_taps()
    mu_x, mu_y = _gaussian_filter_valid(a, taps, axes), _gaussian_filter_valid(b, taps, axes)
    var_x = _gaussian_filter_valid(a * a, taps, axes) - mu_x**2
    var_y = _gaussian_filter_valid(b * b, taps, axes) - mu_y**2
    cov = _gaussian_filter_valid(a * b, taps, axes) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a cube of side ``2 radius + 1`` voxels (Chebyshev ball)."""
    m = np.asarray(mask).astype(bool)
    if radius < 0:
        raise ValueError(f"the dilation radius must be >= 0, got {radius}.")
    for _ in range(radius):
        padded = np.pad(m, 1)
        grown = np.zeros_like(m)
        for offset in np.ndindex(*(3,) * m.ndim):
            grown |= padded[tuple(slice(o, o + n) for o, n in zip(offset, m.shape))]
        m = grown
    return m


def hallucination_score(
    denoised: np.ndarray, reference: np.ndarray, ood_mask: np.ndarray, *, dilation: int = 2
) -> float:
    """Relative RMS error (%) in and around an out-of-distribution structure.

    ``RMS(denoised - reference) / mean(reference) * 100`` over the voxels of
    ``ood_mask`` dilated by ``dilation`` voxels (a cube). A denoiser that has
    never seen a catheter or a very hot bladder invents edges and blobs *next
    to* it (paper Fig. 6), so the region includes a rim around the structure.
    0 means the denoised image matches the reference there; the score grows
    linearly with the error. The reference should be the long scan (or the
    truth): the score then also counts the noise the denoiser left, so compare
    models on the same input, and against the un-denoised input's score.
    :mod:`tgdpet.evaluate` passes the mean over a study's realisations, where
    that noise has averaged out and what is left is the systematic error.
    """
    a, b = _same_shape(denoised, reference)
    m = dilate(_region(ood_mask, b.shape, "out-of-distribution"), dilation)
    t = b[m].mean()
    if t == 0:
        raise ValueError("the reference mean in the out-of-distribution region is 0; the score is undefined.")
    return float(np.sqrt(np.mean((a[m] - b[m]) ** 2)) / abs(t) * 100.0)
