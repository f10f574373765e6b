"""Which feature maps of a model are silent (exactly zero after their ReLU) on an image, and which TGD flags.

    python scripts/silent_channels.py MODEL.safetensors IMAGE [--slices 20:120:4]

Silent maps get no gradient, so TGD cannot retrain them (docs/tgd.md, "Silent channels"). Prints, per conv
layer but the last: the silent maps, and for a TGD-fine-tuned model how many of the channels its last round
flagged (``masks``) are silent. The image is read as ``tgdpet denoise`` reads it (canonical frame,
intensity normalisation) and the slices taken as the network's stacks.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tgdpet import tgd  # noqa: E402
from tgdpet.checkpoint import load_model  # noqa: E402
from tgdpet.data import read_canonical  # noqa: E402
from tgdpet.inputs import intensity_scale, stack_indices  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("--slices", default="20:120:4", help="start:stop:step of the centre slices")
    args = parser.parse_args()
    record = load_model(args.model)
    volume = read_canonical(args.image)
    start, stop, step = (int(v) for v in args.slices.split(":"))
    centres = np.arange(start, min(stop, volume.shape[0]), step)
    stacks = volume[stack_indices(centres, volume.shape[0], record.model.config.in_slices)] / intensity_scale(volume)
    silent = tgd.silent_channels(record.model, torch.from_numpy(np.ascontiguousarray(stacks, np.float32)))
    flagged = record.masks
    print(f"{args.model}: {len(centres)} slices of {args.image}")
    for i, quiet in silent.items():
        line = f"  conv{i + 1}: {int(quiet.sum())} of {quiet.numel()} maps silent"
        if flagged is not None and i in flagged:
            f = flagged[i].cpu()
            line += f"; flagged {int(f.sum())}, of them silent {int((f & quiet).sum())}"
        print(line)


if __name__ == "__main__":
    main()
