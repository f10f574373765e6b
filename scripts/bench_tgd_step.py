"""Cost of one training step with TGD attached, relative to the same step without.

Two copies of one network (same weights, same batch) train side by side; the
steps are interleaved (plain, TGD, plain, TGD, ... with the order swapped
every round) so that slow drifts of a shared machine hit both alike, and the
medians are compared. A TGD step includes everything TGD adds: the gradient
hooks, the stored-statistics BatchNorm of frozen channels (by default) and the restore of frozen entries after
``optimizer.step()``.

    python scripts/bench_tgd_step.py --preset paper --batch 64 --patch 32 --steps 20
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F

from _user_errors import ArgumentParser, positive_int, run
from tgdpet.models import PRESETS, build_model
from tgdpet.runtime import resolve_device
from tgdpet.tgd import attach, build_masks, count_retrained


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_tgd_step(
    preset: str = "paper",
    batch: int = 64,
    patch: int = 32,
    steps: int = 20,
    warmup: int = 2,
    phi: float = 0.3,
    mode: str = "parameter",
    bn_stats: str = "stored",
    device: str = "auto",
    seed: int = 0,
) -> dict:
    """Median milliseconds of an Adam training step without and with TGD, and their ratio."""
    dev = resolve_device(device)
    torch.manual_seed(seed)
    plain = build_model(preset).to(dev, memory_format=torch.channels_last).train()  # as tgdpet train runs
    tgd = copy.deepcopy(plain)
    masks = build_masks(plain, phi)
    opts = {"plain": torch.optim.Adam(plain.parameters(), lr=1e-3), "tgd": torch.optim.Adam(tgd.parameters(), lr=1e-3)}
    models = {"plain": plain, "tgd": tgd}
    engine = attach(tgd, masks, mode=mode, optimizer=opts["tgd"], bn_stats=bn_stats)
    in_slices = plain.config.in_slices
    x = torch.rand(batch, in_slices, patch, patch, device=dev).contiguous(memory_format=torch.channels_last)
    y = x + 0.1 * torch.randn_like(x)

    def step(name: str) -> float:
        model, opt = models[name], opts[name]
        _sync(dev)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x), y).backward()
        opt.step()
        _sync(dev)
        return (time.perf_counter() - start) * 1e3

    times: dict[str, list[float]] = {"plain": [], "tgd": []}
    try:
        for i in range(warmup + steps):
            order = ("plain", "tgd") if i % 2 == 0 else ("tgd", "plain")
            for name in order:
                ms = step(name)
                if i >= warmup:
                    times[name].append(ms)
    finally:
        engine.detach()
    plain_ms, tgd_ms = statistics.median(times["plain"]), statistics.median(times["tgd"])
    return {
        "device": str(dev),
        "preset": preset,
        "batch": batch,
        "patch": patch,
        "steps": steps,
        "mode": mode,
        "bn_stats": bn_stats,
        "phi": phi,
        "retrained_fraction": count_retrained(plain, masks).fraction,
        "plain_ms": plain_ms,
        "tgd_ms": tgd_ms,
        "ratio": tgd_ms / plain_ms,
    }


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper", choices=list(PRESETS))
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--patch", type=positive_int, default=32)
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--mode", choices=["parameter", "activation"], default="parameter")
    parser.add_argument("--bn-stats", choices=["stored", "batch"], default="stored")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    r = bench_tgd_step(args.preset, args.batch, args.patch, args.steps, mode=args.mode, bn_stats=args.bn_stats,
                       device=args.device)  # fmt: skip
    print(
        f"{r['preset']} preset, batch {r['batch']} of {r['patch']}x{r['patch']}x3, {r['device']}, TGD {r['mode']} "
        f"mode, {r['bn_stats']} BN statistics ({100 * r['retrained_fraction']:.1f} % retrained), median of {r['steps']} interleaved steps:\n"
        f"  plain {r['plain_ms']:.1f} ms   TGD {r['tgd_ms']:.1f} ms   ratio {r['ratio']:.3f}"
    )


if __name__ == "__main__":
    run(main)
