"""How many parameters KSE flags at phi = 0.3 .. 0.6 on a briefly trained network.

Trains a DnCNN preset (``small`` by default) for a fixed wall-clock budget on
synthetic data (smooth random 3D blobs with Poisson noise at two count
levels, the target being the noise-free volume), then prints, for each
threshold, the fraction of parameters TGD would retrain (conv1 retrained or
frozen) and the kernel-drop study of paper Fig. 4 on a held-out noisy volume.
The paper reports 51.4 / 51.6 / 53.0 / 67.3 % dropped for its trained
network; an untrained (random) network is printed alongside for contrast.

    python scripts/kse_fractions.py --seconds 60
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from tgdpet.data import intensity_scale
from tgdpet.models import build_model
from tgdpet.tgd import build_masks, count_retrained, drop_study


def blob_volume(rng: np.random.Generator, shape=(24, 64, 64), n_blobs: int = 12) -> np.ndarray:
    """A smooth, positive (z, y, x) activity map: background plus random Gaussian blobs."""
    zz, yy, xx = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    vol = np.full(shape, 0.2, dtype=np.float32)
    for _ in range(n_blobs):
        centre = rng.uniform(0, shape)
        sigma = rng.uniform(1.5, 8.0, size=3)
        d2 = sum(((g - c) / s) ** 2 for g, c, s in zip((zz, yy, xx), centre, sigma))
        vol += rng.uniform(0.5, 4.0) * np.exp(-0.5 * d2)
    return vol


def noisy(rng: np.random.Generator, clean: np.ndarray, counts: float) -> np.ndarray:
    """Poisson noise at ``counts`` expected events per unit activity, back on the activity scale."""
    return (rng.poisson(clean * counts) / counts).astype(np.float32)


def sample_batch(rng, pairs, batch: int, patch: int, in_slices: int):
    """Random 2.5D patches: (noisy stack, clean stack), each divided by the noisy volume's scale."""
    xs, ys = [], []
    for _ in range(batch):
        src, tgt, scale = pairs[rng.integers(len(pairs))]
        z = rng.integers(0, src.shape[0] - in_slices + 1)
        y, x = (rng.integers(0, s - patch + 1) for s in src.shape[1:])
        sl = np.s_[z : z + in_slices, y : y + patch, x : x + patch]
        xs.append(src[sl] / scale)
        ys.append(tgt[sl] / scale)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def train_briefly(preset: str, seconds: float, seed: int) -> tuple[torch.nn.Module, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = build_model(preset)
    pairs = []
    for _ in range(6):
        clean = blob_volume(rng)
        for counts in (5.0, 20.0):
            src = noisy(rng, clean, counts)
            pairs.append((src, clean, intensity_scale(src)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x, y = sample_batch(rng, pairs, batch=16, patch=32, in_slices=model.config.in_slices)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        steps += 1
    held_out = noisy(rng, blob_volume(rng), 10.0)
    return model.eval(), held_out, steps


def report(model, volume, phis, title: str) -> None:
    print(f"\n{title}")
    print(f"{'phi':>5} {'retrained (conv1 retrain)':>26} {'retrained (conv1 freeze)':>25} {'output change':>14}")
    for r in drop_study(model, phis, volume):
        freeze = count_retrained(model, build_masks(model, r.phi, conv1="freeze")).fraction
        print(f"{r.phi:>5.2f} {100 * r.fraction_dropped:>25.1f}% {100 * freeze:>24.1f}% {r.output_change:>14.3e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phis", default="0.3,0.4,0.5,0.6")
    args = parser.parse_args()
    phis = [float(p) for p in args.phis.split(",")]
    torch.manual_seed(args.seed)
    untrained = build_model(args.preset).eval()
    model, volume, steps = train_briefly(args.preset, args.seconds, args.seed)
    report(untrained, volume, phis, f"{args.preset}, untrained (random init)")
    report(model, volume, phis, f"{args.preset}, trained {steps} Adam steps ({args.seconds:g} s) on synthetic blobs")


if __name__ == "__main__":
    main()
