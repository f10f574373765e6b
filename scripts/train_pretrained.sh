#!/usr/bin/env bash
# How the built-in model tgdpet/pretrained/dncnn-v1-uniform64.safetensors was made.
# 10 simulated v1 studies (low/normal/high BMI, 128x128x144, 4 mm voxels, 40-60 random lesions of
# 6-30 mm at 2-10:1 each, --dense-lesions; s004 and s009 held out for validation), every count level
# 30-180 s paired with its 600 s target, the 'uniform64' preset (7 x 64 channels) seeing 5 adjacent
# slices, 100 epochs of 4096 random 32x32x5 patches (80 % of them centred where the target has
# detail), the squared error weighted by 1 + 16 x the target's local detail (--detail-weight: keeps
# lesion uptake) and divided by each patch's input noise power (--noise-relative-loss: removes the
# same share of the noise at every count level and body size), Adam 1e-3, bf16 autocast (--amp),
# two CPU threads (22 minutes on a 2-core machine with bf16 units; without them expect several
# times that; the thread count is pinned because training's rounding, and so the file, depends on it). The best validation epoch is shipped. docs/builtin-model.md measures each of these
# choices, the spread of a rerun, and what this file does on test studies and a sphere phantom.
# Check it: tgdpet simulate EVAL --studies 1 --protocols v1 --ood none --seed 4000, then
# tgdpet evaluate EVAL/v1 --model builtin=tgdpet/pretrained/dncnn-v1-uniform64.safetensors, and
# python scripts/lesion_phantom.py (a sphere phantom that is not the training phantom).
# Usage: scripts/train_pretrained.sh [WORK]  (WORK, relative to the repository, holds the data and the run).
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE
cd "$(dirname "$0")/.."  # the repository: the model is written into tgdpet/pretrained/
work=${1:-pretrained-work}
mkdir -p "$work"
tgdpet simulate "$work/data" --studies 10 --protocols v1 --no-test-study --ood none --seed 1000 --dense-lesions \
    --no-progress
OMP_NUM_THREADS=2 tgdpet train "$work/data/v1" --out "$work/run" --preset uniform64 --config small --in-slices 5 \
    --amp --detail-weight 16 --noise-relative-loss --structure-fraction 0.8 --epochs 100 --seed 0 --no-progress
# Ship the best epoch with what the training run cannot know about its data (shown by `tgdpet models`).
python - "$work/run/best.safetensors" tgdpet/pretrained/dncnn-v1-uniform64.safetensors <<'PY'
import sys

from tgdpet.checkpoint import load_model, save_model
from tgdpet.domain import Domain

src, dest = sys.argv[1:]
record = load_model(src)
domain = Domain(voxel_min_mm=(4.0, 4.0, 4.0), voxel_max_mm=(4.0, 4.0, 4.0), units=("BQML",), protocols=("v1",),
                count_levels_s=(30.0, 180.0), tracer="FDG")
provenance = {
    **record.provenance,
    "tracer": "FDG (simulated: tgdpet's neck-to-pelvis FDG phantom)",
    "protocol": "v1 (simulated OSEM, PSF over-estimated at 8 mm, 4 mm post-filter: coarse noise)",
    "voxel_size_mm": [4.0, 4.0, 4.0],
    "training_data": "10 simulated whole-body studies with 40-60 lesions each (tgdpet simulate --studies 10 "
    "--protocols v1 --seed 1000 --dense-lesions), inputs of 30-180 s against 600 s targets",
    "domain": domain.to_json(),  # what denoise compares inputs with (tgdpet.domain)
}
save_model(dest, record.model, preset=record.preset, masks_history=[], provenance=provenance,
           normalization=record.normalization)
PY
