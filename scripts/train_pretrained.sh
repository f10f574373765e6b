#!/usr/bin/env bash
# How the built-in model tgdpet/pretrained/dncnn-v1-small.safetensors was made.
# 10 simulated v1 studies (low/normal/high BMI, 128x128x144, 4 mm voxels; s004 and s009
# held out for validation), every count level 30-180 s paired with its 600 s target,
# the 'small' preset (7 x 32 channels), 50 epochs of 4096 random 32x32x3 patches, Adam 1e-3,
# fp32 on 2 CPU cores. The best validation epoch is shipped.
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE
work=${1:-pretrained-work}
tgdpet simulate "$work/data" --studies 10 --protocols v1 --no-test-study --ood none --seed 1000 --no-progress
tgdpet train "$work/data/v1" --out "$work/run" --config small --epochs 50 --seed 0 --no-progress
cp "$work/run/best.safetensors" tgdpet/pretrained/dncnn-v1-small.safetensors
