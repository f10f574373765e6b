"""How much spare capacity a training run leaves for TGD, against the channel penalty's weight.

    python scripts/spare_capacity.py DATA --volume TEST.nii.gz --penalties 0,1e-3,1e-2 --out runs/spare
        [--target TARGET.nii.gz] [--preset small] [--epochs 6] [--patches-per-epoch 17280] [--amp/--no-amp]

Trains one network per penalty weight (``tgdpet train --channel-penalty``) on
the same data, seed and patches, then measures on each (from the run's last
epoch, as the reproduction's v1-net):

- PSNR of the denoised ``--volume`` against ``--target`` (its full-count image; what the penalty costs
  in quality);
- dead channels: feature maps whose group norm (:func:`tgdpet.train.methods.channel_groups`)
  is below 5 % of the largest in its layer;
- the share of parameters KSE flags at each phi, and how much dropping them
  changes the denoised ``--volume`` (the paper's Fig. 4; :func:`tgdpet.drop.drop_study`);
- per layer, the rank correlation between KSE and each channel's importance,
  measured by ablation (the relative RMS change of the denoised slab when that
  channel alone is zeroed). Positive: KSE ranks like importance; near zero or
  negative: its "meaningless" channels are not the unimportant ones.

Writes ``OUT/spare_capacity.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _user_errors import ArgumentParser, checked, comma_list, positive_int, run  # noqa: E402
from tgdpet.checkpoint import load_model  # noqa: E402
from tgdpet.data import load_manifest  # noqa: E402
from tgdpet.drop import drop_study, relative_rms_change, zero_channels  # noqa: E402
from tgdpet.infer import denoise_array  # noqa: E402
from tgdpet.io import read_volume  # noqa: E402
from tgdpet.kse import score_network  # noqa: E402
from tgdpet.metrics import psnr  # noqa: E402
from tgdpet.models import DnCNN  # noqa: E402
from tgdpet.paper.report import write_text  # noqa: E402
from tgdpet.train import TrainConfig, resolve_config, train  # noqa: E402
from tgdpet.train.methods import channel_groups  # noqa: E402

PHIS = (0.3, 0.4, 0.5, 0.6)
#: A channel whose group norm is below this share of its layer's largest carries (next to) nothing.
DEAD_SHARE = 0.05
PENALTY = checked(float, lambda v: 0 <= v < float("inf"), "a channel-penalty weight (a number, 0 or more)")


def group_norms(model: DnCNN) -> list[np.ndarray]:
    """Per scored layer, each feature map's group norm (what makes it and what reads it)."""
    return [
        torch.sqrt(sum(t.detach().float().pow(2).reshape(t.shape[0], -1).sum(1) for t in group)).cpu().numpy()
        for group in channel_groups(model)
    ]


def dead_channels(model: DnCNN) -> tuple[int, int]:
    """How many feature maps carry next to nothing, of how many (see :data:`DEAD_SHARE`)."""
    norms = group_norms(model)
    return sum(int((n < DEAD_SHARE * n.max()).sum()) for n in norms), sum(n.size for n in norms)


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 (ties broken by position; scores here are continuous)."""
    out = np.empty(len(x))
    out[np.argsort(x, kind="stable")] = np.arange(len(x))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation; 0 where either side has no spread."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def kse_against_ablation(model: DnCNN, slab: np.ndarray, device: torch.device) -> list[dict]:
    """Per scored layer: Spearman(KSE, ablation importance), and the importance of flagged vs other channels."""
    reference = denoise_array(model, slab, device=device, precision="fp32")
    rows = []
    for layer in score_network(model, 0.3):
        i, width = layer.source, len(layer.scores)
        importance = np.empty(width)
        for c in range(width):
            mask = {i: torch.arange(width) == c}
            importance[c] = relative_rms_change(reference, denoise_array(zero_channels(model, mask), slab,
                                                                        device=device, precision="fp32"))
        flagged = layer.meaningless.numpy()
        rows.append({
            "conv_index": i,
            "spearman_kse_importance": spearman(layer.scores.numpy(), importance),
            "flagged": int(flagged.sum()),
            "importance_flagged_mean": float(importance[flagged].mean()) if flagged.any() else None,
            "importance_other_mean": float(importance[~flagged].mean()) if (~flagged).any() else None,
        })  # fmt: skip
    return rows


def measure(path: Path, volume: np.ndarray, target: np.ndarray | None, slab: np.ndarray, device) -> dict:
    model = load_model(path, device).model.eval()
    dead, maps = dead_channels(model)
    denoised, drops = drop_study(model, PHIS, lambda net: denoise_array(net, volume, device=device, precision="fp32"))
    return {
        "psnr_db": psnr(denoised, target) if target is not None else None,
        "dead_channels": dead,
        "feature_maps": maps,
        "drop": [d.to_dict() for d in drops],
        "kse_vs_ablation": kse_against_ablation(model, slab, device),
    }


def table(results: list[dict]) -> str:
    head = "| penalty | PSNR dB | dead maps | " + " | ".join(
        f"phi {p}: dropped % / change %" for p in PHIS
    ) + " | Spearman(KSE, ablation) conv1 / other layers (mean) |"
    lines = [head, "|" + "---|" * (4 + len(PHIS))]
    for r in results:
        m = r["measured"]
        drops = " | ".join(f"{100 * d['fraction_dropped']:.1f} / {100 * d['output_change']:.2f}" for d in m["drop"])
        corr = [row["spearman_kse_importance"] for row in m["kse_vs_ablation"]]
        lines.append(
            f"| {r['penalty']:g} | {m['psnr_db'] or float('nan'):.2f} | {m['dead_channels']} of {m['feature_maps']} | {drops} | "
            f"{corr[0]:+.2f} / {np.mean(corr[1:]):+.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a training manifest (or its folder) with train and val studies")
    parser.add_argument("--volume", required=True, help="a held-out noisy image (NIfTI) for the drop study")
    parser.add_argument("--target", help="the full-count image of --volume, for the PSNR")
    parser.add_argument("--penalties", type=comma_list(PENALTY), default="0,1e-3,1e-2",
                        help="channel-penalty weights, comma-separated")
    parser.add_argument("--out", required=True, help="folder for the runs and spare_capacity.json")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--epochs", type=positive_int, default=6)
    parser.add_argument("--patches-per-epoch", type=positive_int, default=4096)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--slab", type=positive_int, default=12, help="central slices the ablation denoises")
    args = parser.parse_args(argv)
    # everything a user can get wrong is refused before --out is made and the first network trained
    volume = read_volume(args.volume).data
    target = read_volume(args.target).data if args.target else None
    configs = {penalty: resolve_config(TrainConfig, preset=args.preset, epochs=args.epochs, channel_penalty=penalty,
                                       patches_per_epoch=args.patches_per_epoch, amp=args.amp)
               for penalty in args.penalties}  # fmt: skip
    load_manifest(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mid = volume.shape[0] // 2
    slab = volume[max(mid - args.slab // 2, 0) : mid + args.slab // 2]
    results = []
    for penalty, cfg in configs.items():
        folder = out / f"penalty-{penalty:g}"
        result = train(args.data, folder, cfg, overwrite=True, progress_bar=False, echo=print)
        device = next(result.model.parameters()).device
        results.append({"penalty": penalty, "train_loss": result.progress.history[-1]["train_loss"],
                        "measured": measure(folder / "last.safetensors", volume, target, slab, device)})  # fmt: skip
        write_text(out / "spare_capacity.json", json.dumps(results, indent=1) + "\n")
        print(table(results), flush=True)


if __name__ == "__main__":
    run(main)
