"""Which feature maps of a model are silent (exactly zero after their ReLU) on an image, and which TGD flags.

    python scripts/silent_channels.py MODEL IMAGE [--slices 20:120:4]

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

from _user_errors import ArgumentParser, run  # noqa: E402
from tgdpet import tgd  # noqa: E402
from tgdpet.builtin import resolve_model  # noqa: E402
from tgdpet.checkpoint import load_model  # noqa: E402
from tgdpet.data import read_canonical  # noqa: E402
from tgdpet.errors import TgdpetError  # noqa: E402
from tgdpet.inputs import intensity_scale, stack_indices  # noqa: E402


def slice_range(text: str) -> range:
    """``--slices``' value: ``start:stop:step``, whole numbers, start 0 or more, step positive."""
    try:
        start, stop, step = (int(v) for v in text.split(":"))
    except ValueError:
        start = step = -1
    if start < 0 or step < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not start:stop:step (whole numbers, start 0 or more, step 1 or more), e.g. 20:120:4"
        )
    return range(start, stop, step)


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a tgdpet model file or a built-in model's name (tgdpet models lists them)")
    parser.add_argument("image")
    parser.add_argument("--slices", type=slice_range, default="20:120:4", help="start:stop:step of the centre slices")
    args = parser.parse_args()
    record = load_model(resolve_model(args.model))
    volume = read_canonical(args.image)
    wanted, depth = args.slices, volume.shape[0]
    centres = np.arange(wanted.start, min(wanted.stop, depth), wanted.step)
    if not len(centres):
        raise TgdpetError(
            f"--slices {wanted.start}:{wanted.stop}:{wanted.step} holds none of the {depth} slices of "
            f"{args.image}; choose slices from 0 to {depth - 1}."
        )
    stacks = volume[stack_indices(centres, depth, record.model.config.in_slices)] / intensity_scale(volume)
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
    run(main)
