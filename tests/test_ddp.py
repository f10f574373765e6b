"""Multi-process training: ``train`` and ``tgd-finetune`` under torchrun, 2 CPU processes with Gloo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file
from test_data import make_dataset

from tgdpet.checkpoint import load_model
from tgdpet.models import bn_after

# Runs in each torchrun process: train, then TGD-fine-tune the result; every rank dumps its final
# weights, and every file write through tgdpet's atomic writers is logged with the writer's rank.
SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    from safetensors.torch import save_file
    import tgdpet.checkpoint, tgdpet.train.outputs
    from tgdpet.train import FinetuneConfig, TrainConfig, finetune, resolve_config, train

    data, out, dump = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    original = tgdpet.checkpoint.atomic_file

    def logged(path, *args, **kwargs):
        with open(os.path.join(dump, f"writes{rank}.txt"), "a") as log:
            log.write(f"{path}\\n")
        return original(path, *args, **kwargs)

    tgdpet.checkpoint.atomic_file = tgdpet.train.outputs.atomic_file = logged
    fast = dict(device="cpu", amp=False, patch_size=16, batch_size=16, patches_per_epoch=64, epochs=2)
    trained = train(data, f"{out}/train", resolve_config(TrainConfig, preset="tiny", **fast), progress_bar=False)
    tuned = finetune(f"{out}/train/last.safetensors", data, f"{out}/tgd",
                     resolve_config(FinetuneConfig, phi=0.5, **fast), progress_bar=False)
    for name, result in (("train", trained), ("tgd", tuned)):
        weights = {k: v.contiguous() for k, v in result.model.named_parameters()}
        save_file(weights, os.path.join(dump, f"{name}{rank}.safetensors"))
    """
)


def test_two_processes_keep_identical_weights_and_only_rank0_writes(tmp_path):
    data = make_dataset(tmp_path / "data")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out, dump = tmp_path / "out", tmp_path / "dump"
    out.mkdir()
    dump.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # A session of its own, so that a hang kills torchrun's workers too, not only torchrun.
    proc = subprocess.Popen(
        cmd + [str(script), str(data), str(out), str(dump)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    assert proc.returncode == 0, output[-4000:]
    assert "Warning" not in output, output[-4000:]

    for name in ("train", "tgd"):
        r0, r1 = load_file(dump / f"{name}0.safetensors"), load_file(dump / f"{name}1.safetensors")
        assert all(torch.equal(r0[k], r1[k]) for k in r0), name
        saved = dict(load_model(out / name / "last.safetensors").model.named_parameters())
        assert all(torch.equal(saved[k].detach(), r0[k]) for k in r0), name

    # TGD under DDP: every frozen channel of the fine-tuned model (kernel, bias, BN gamma and beta, BN running
    # statistics) is bit-identical to the trained one's, while the retrained channels moved.
    base, tuned = load_model(out / "train" / "last.safetensors"), load_model(out / "tgd" / "last.safetensors")
    frozen_bn = 0
    for i, keep in tuned.masks.items():
        # A frozen channel's kernels reading a retrained map of conv i-1 train too (read_kernels retrain).
        reads = tuned.masks[i - 1] if i > 0 else torch.zeros(base.model.convs[i].in_channels, dtype=torch.bool)
        tensors = {"weight": lambda m: m.convs[i].weight[:, ~reads], "bias": lambda m: m.convs[i].bias}
        if bn_after(base.model, i) is not None:
            frozen_bn += int((~keep).sum())
            tensors.update({f"bn {name}": (lambda m, name=name: getattr(bn_after(m, i), name))
                            for name in ("weight", "bias", "running_mean", "running_var")})  # fmt: skip
        for what, get in tensors.items():
            before, after = get(base.model).detach(), get(tuned.model).detach()
            assert torch.equal(before[~keep], after[~keep]), f"conv{i + 1} {what}: a frozen channel moved"
            if what.startswith("bn") and keep.any():
                assert not torch.equal(before[keep], after[keep]), f"conv{i + 1} {what}: no retrained channel moved"
    assert frozen_bn > 0  # some frozen channels had a BatchNorm to check
    assert tuned.provenance["world_size"] == 2

    written = (dump / "writes0.txt").read_text().splitlines()
    assert any(p.endswith("best.safetensors") for p in written)
    assert any(p.endswith("training_state.pt") for p in written)
    assert not (dump / "writes1.txt").exists()
