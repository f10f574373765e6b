"""How fast tgdpet runs on this machine, measured side by side in one run.

- the machine's matrix-multiply peak in each precision (the yardstick);
- denoising throughput of the fast path (:mod:`tgdpet.infer`, each precision,
  and with ``--compile`` under torch.compile) against the plain way (eager
  fp32, contiguous NCHW, BatchNorm unfolded, 8 slices per batch), for the
  ``paper`` and ``small`` presets; FLOP/s count the network's direct-convolution
  multiply-adds (``DnCNNConfig.macs_per_voxel() * 2`` per output voxel);
- one training step with and without TGD attached (``bench_tgd_step.py``);
- one training step of each preset in fp32 and in the device's reduced
  precision (what ``amp`` chooses by default, ``tgdpet.precision.amp_dtype``);
- the training data pipeline (drawing one batch of patches) against one
  training step of the small preset, the share the loop spends on data, and
  the share of an epoch that re-estimating BatchNorm's statistics costs;
- KSE scoring of a whole paper-preset network;
- ``tgdpet denoise`` end to end in a fresh process (imports, reading, writing) against the built-in
  network alone, on the demo's volume and a 2 mm whole-body one (``--end-to-end`` for this alone);
- peak memory of separate processes denoising a 256x256x600 volume with the
  small preset, and 48 slices of it with the paper preset, from which the
  paper preset's peak on all 600 slices follows.

Everything that is compared (the denoisers and the peak GEMMs) is timed in
rotating order within each repeat, so a shared machine's slow spells hit all
alike; medians are reported. Ratios are therefore more trustworthy than
absolute numbers on a busy machine. Results: ``docs/benchmarks.md``.

    python scripts/bench.py                        # CPU, a few minutes
    python scripts/bench.py --quick                # everything shrunk, under a minute
    python scripts/bench.py --device cuda --json bench-cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _user_errors import ArgumentParser, output_file, run  # noqa: E402
from tgdpet.files import atomic_file  # noqa: E402
from tgdpet.inputs import intensity_scale, stack_indices  # noqa: E402
from tgdpet.infer import Denoiser, denoise_array  # noqa: E402
from tgdpet.models import DnCNN, build_model  # noqa: E402
from tgdpet.precision import autocast_dtype  # noqa: E402
from tgdpet.runtime import resolve_device  # noqa: E402
from tgdpet.config import LoopConfig  # noqa: E402

GIB = 2**30
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, with the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved_medians(
    variants: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each variant, run in a rotating order in every repeat (after one warm-up call each)."""
    for fn in variants.values():
        fn()
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(variants[name], device))
    return {n: statistics.median(t) for n, t in times.items()}


# --------------------------------------------------------------------------- voxel sizes


def bench_voxel_sizes(device: torch.device, quick: bool, repeats: int) -> list[dict]:
    """The built-in model on whole-body volumes (512 x 512 x 576 mm) of 4, 2.7 and 2 mm voxels, in the automatic
    precision: as ``tgdpet denoise`` does them (the best of the grids from theirs to the model's, and at the
    model's 4 mm its own and one a step finer, :func:`tgdpet.resample.denoise_on_best_grid`), on the input's own
    grid alone, and at 2 mm also on the model's 4 mm grid alone (tgdpet before the choice of grid). Ratios are
    against the 4 mm volume on its own grid, one network pass at the model's voxels."""
    from tgdpet.denoise import load_denoiser
    from tgdpet.resample import denoise_on_grid

    denoiser = load_denoiser(None, device=device, precision="auto")
    model_mm = denoiser.domain.voxel_min_mm
    shapes = {4.0: (144, 128, 128), 2.7: (213, 190, 190), 2.0: (288, 256, 256)}
    if quick:
        shapes = {4.0: (36, 128, 128), 2.7: (54, 190, 190), 2.0: (72, 256, 256)}
    volumes = {v: synthetic_volume(shape) for v, shape in shapes.items()}

    def run(voxel: float, resample: bool) -> Callable[[], object]:
        def go() -> object:
            denoiser.resample = resample
            return denoiser(volumes[voxel], voxel_mm=(voxel,) * 3)
        return go

    def model_grid_only() -> object:
        return denoise_on_grid(volumes[2.0], (2.0,) * 3, model_mm, lambda a: denoiser._full(a, False))

    variants = {
        "4 mm, own grid only": (4.0, run(4.0, False)),
        "4 mm, best grid": (4.0, run(4.0, True)),
        "2.7 mm, best grid": (2.7, run(2.7, True)),
        "2 mm, best grid": (2.0, run(2.0, True)),
        "2 mm, model's grid only": (2.0, model_grid_only),
        "2 mm, own grid only": (2.0, run(2.0, False)),
    }
    medians = interleaved_medians({name: go for name, (_, go) in variants.items()}, repeats, device)
    return [
        {"volume": name, "shape": list(shapes[voxel]), "seconds": medians[name],
         "vs 4 mm": medians[name] / medians["4 mm, own grid only"]}
        for name, (voxel, _) in variants.items()
    ]


# --------------------------------------------------------------------------- end to end


def _cli_seconds(args: list[str]) -> float:
    """Wall seconds of one ``tgdpet`` command in a fresh process (imports included), or an error."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tgdpet.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"tgdpet {' '.join(args)} failed: {done.stderr.strip()}")
    return time.perf_counter() - start


def bench_end_to_end(device: torch.device, quick: bool, repeats: int) -> list[dict]:
    """``tgdpet denoise`` of a NIfTI file in a fresh process against the built-in network alone on its voxels.

    Two volumes: the demo's (128 x 128 x 144 at 4 mm) and a whole-body one at 2 mm (256 x 256 x 288;
    denoised on the model's grid). Beside them, what the rest of the wait is made of: starting Python and
    importing tgdpet's denoising code (torch among it), reading the file, writing the result. All timed
    interleaved; medians.
    """
    import tempfile

    from tgdpet.denoise import denoise_volume, load_denoiser
    from tgdpet.io import Volume, read_volume, write_volume

    shapes = {"demo volume, 4 mm": ((144, 128, 128), 4.0), "whole body, 2 mm": ((288, 256, 256), 2.0)}
    if quick:  # a check that the path works, not a figure
        shapes = {"demo volume, 4 mm": ((36, 128, 128), 4.0)}
    denoiser = load_denoiser(None, device=device, precision="auto")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, (shape, mm)) in enumerate(shapes.items()):
            src, dst = Path(tmp) / f"in{k}.nii.gz", Path(tmp) / f"out{k}.nii.gz"
            write_volume(Volume(synthetic_volume(shape), np.diag([mm, mm, mm, 1.0]), units="BQML"), src)
            volume = read_volume(src)
            command = ["denoise", str(src), "-o", str(dst), "--overwrite", "--device", str(device), "--no-progress"]
            variants = {
                "end to end": lambda: _cli_seconds(command),
                "network": lambda: denoise_volume(denoiser, volume),
                "imports": lambda: subprocess.run([sys.executable, "-c", "import tgdpet.denoise"], check=True),
                "read": lambda: read_volume(src),
                "write": lambda: write_volume(volume, dst, overwrite=True),
            }
            medians = interleaved_medians(variants, repeats, device)
            rows.append({"volume": name, "shape": list(shape), **{k: round(v, 3) for k, v in medians.items()},
                         "ratio": medians["end to end"] / medians["network"]})  # fmt: skip
    return rows


def print_end_to_end(rows: list[dict]) -> None:
    print("tgdpet denoise in a fresh process against the network alone (medians of interleaved runs; seconds)")
    print(f"  {'volume':<20}{'end to end':>11}{'network':>9}{'ratio':>7}{'imports':>9}{'read':>7}{'write':>7}")
    for r in rows:
        print(f"  {r['volume']:<20}{r['end to end']:>11.2f}{r['network']:>9.2f}{r['ratio']:>6.2f}x"
              f"{r['imports']:>9.2f}{r['read']:>7.2f}{r['write']:>7.2f}")  # fmt: skip


# --------------------------------------------------------------------------- peaks


def precisions(device: torch.device) -> list[torch.dtype]:
    """fp32 plus the reduced precisions the device has units for."""
    if device.type == "cuda":
        return [torch.float32, torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])
    return [torch.float32] + ([torch.bfloat16] if autocast_dtype(device) is not None else [])


def gemm_variants(device: torch.device, n: int, calls: int) -> dict[str, tuple[Callable[[], None], float]]:
    """The yardstick: per precision, ``calls`` n x n matrix products (torch.mm, and as a 1x1 conv) and their FLOP.

    The 1x1 channels-last convolution runs in oneDNN (CPU) or cuDNN, the
    libraries that run the denoiser's convs; torch.mm runs in MKL/cuBLAS. On
    AMD CPUs MKL's fp32 GEMM reaches only about half of what oneDNN does, so
    the peak is the better of the two. They are timed in the same rotation
    as the denoisers, so a busy spell of a shared machine slows both.
    """
    variants = {}
    for dtype in precisions(device):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        conv = torch.nn.Conv2d(n, n, 1, bias=False).to(device, dtype).to(memory_format=torch.channels_last)
        # n pixels of n channels into n channels: the same n^3 multiply-adds as the mm.
        x = torch.randn(1, n, n // 64, 64, device=device).to(dtype).contiguous(memory_format=torch.channels_last)

        def mm(a: torch.Tensor = a, b: torch.Tensor = b) -> None:
            for _ in range(calls):
                torch.mm(a, b)

        def conv1x1(conv: torch.nn.Module = conv, x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                for _ in range(calls):
                    conv(x)

        variants[f"{DTYPE_NAMES[dtype]} torch.mm"] = (mm, calls * 2 * n**3)
        variants[f"{DTYPE_NAMES[dtype]} 1x1 conv"] = (conv1x1, calls * 2 * n**3)
    return variants


# --------------------------------------------------------------------------- denoising


def synthetic_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """PET-like positive, skewed float32 values (made without a float64 temporary)."""
    volume = np.random.default_rng(seed).standard_gamma(2.0, size=shape, dtype=np.float32)
    volume *= 1000.0
    return volume


def plain_denoise(model: DnCNN, volume: np.ndarray, device: torch.device, batch: int = 8) -> np.ndarray:
    """The in-house baseline: eager fp32, contiguous NCHW, BatchNorm as trained, 8 slices per batch."""
    depth = volume.shape[0]
    scale = intensity_scale(volume)
    centre = model.config.in_slices // 2
    out = np.empty_like(volume)
    with torch.no_grad():
        for start in range(0, depth, batch):
            ks = np.arange(start, min(start + batch, depth))
            x = torch.from_numpy(volume[stack_indices(ks, depth, model.config.in_slices)] / scale).to(device)
            out[ks] = (model(x)[:, centre] * scale).cpu().numpy()
    return out


def rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)))


def bench_denoise(
    preset: str,
    shape: tuple[int, int, int],
    device: torch.device,
    repeats: int,
    compile_: bool,
    gemms: dict[str, tuple[Callable[[], None], float]],
) -> tuple[list[dict], dict]:
    """Throughput of the plain baseline and of the fast path in every precision on one volume, and the peaks.

    The ``gemms`` (:func:`gemm_variants`) run in the same rotation; each row's
    fraction of peak is against the peak of its own precision.
    """
    torch.manual_seed(0)
    model = build_model(preset).to(device).eval()
    volume = synthetic_volume(shape)
    voxels = volume.size
    flop = 2 * model.config.macs_per_voxel() * voxels
    auto = DTYPE_NAMES[autocast_dtype(device) or torch.float32]
    denoisers = {"plain": None}
    for dtype in precisions(device):
        denoisers[f"fast {DTYPE_NAMES[dtype]}"] = Denoiser(model, device=device, precision=DTYPE_NAMES[dtype])
    if compile_:
        start = time.perf_counter()
        denoisers[f"fast {auto} compiled"] = Denoiser(model, device=device, precision=auto, compile=True)
        denoisers[f"fast {auto} compiled"](volume[:1])
        print(f"  ({preset}: torch.compile's first call took {time.perf_counter() - start:.1f} s)", flush=True)
    outputs: dict[str, np.ndarray] = {}

    def run(name: str) -> Callable[[], None]:
        def call() -> None:
            d = denoisers[name]
            outputs[name] = plain_denoise(model, volume, device) if d is None else d(volume)

        return call

    variants = {name: run(name) for name in denoisers} | {name: fn for name, (fn, _) in gemms.items()}
    seconds = interleaved_medians(variants, repeats, device)
    peaks: dict[str, dict] = {}
    for name, (_, gemm_flop) in gemms.items():
        precision, kind = name.split(" ", 1)
        peaks.setdefault(precision, {})[f"{kind} gflops"] = gemm_flop / seconds[name] / 1e9
    for p in peaks.values():
        p["peak gflops"] = max(p.values())
    rows = []
    for name, d in denoisers.items():
        noise_ref = volume - outputs["plain"]
        precision = "fp32" if d is None else DTYPE_NAMES[d.dtype or torch.float32]
        gflops = flop / seconds[name] / 1e9
        rows.append(
            {
                "preset": preset,
                "variant": name,
                "precision": precision,
                "batch_slices": 8 if d is None else d.batch_for(shape),
                "shape_zyx": list(shape),
                "seconds": seconds[name],
                "voxels_per_s": voxels / seconds[name],
                "gflops": gflops,
                "speedup_vs_plain": seconds["plain"] / seconds[name],
                "fraction_of_peak": gflops / peaks[precision]["peak gflops"],
                "noise_estimate_rel_rms_vs_plain": rel_rms(volume - outputs[name], noise_ref),
            }
        )
    return rows, peaks


# --------------------------------------------------------------------------- TGD, KSE


def bench_tgd(device: torch.device, quick: bool) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_tgd_step import bench_tgd_step

    if quick:
        return bench_tgd_step(preset="small", batch=16, patch=32, steps=6, device=str(device))
    return bench_tgd_step(preset="paper", batch=16, patch=32, steps=20, device=str(device))


def bench_train_precision(device: torch.device, quick: bool, repeats: int) -> list[dict]:
    """Median Adam step (batch 64 of 32x32x3 patches, channels-last, MSE) per preset, fp32 vs reduced precision."""
    dtypes = precisions(device)
    rows = []
    for preset in ("tiny", "small") if quick else ("tiny", "small", "uniform64", "paper"):
        x = torch.rand(64, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        y = x + 0.1 * torch.randn_like(x)
        variants = {}
        for dtype in dtypes:
            torch.manual_seed(0)
            model = build_model(preset).to(device, memory_format=torch.channels_last).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def step(model=model, opt=opt, dtype=dtype) -> None:
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    out = model(x)
                F.mse_loss(out.float(), y).backward()
                opt.step()

            variants[DTYPE_NAMES[dtype]] = step
        ms = {name: 1e3 * t for name, t in interleaved_medians(variants, repeats, device).items()}
        rows.append({"preset": preset, "ms": ms, "fp32_over": {n: ms["fp32"] / v for n, v in ms.items()}})
    return rows


def bench_data_pipeline(device: torch.device, quick: bool, repeats: int) -> dict:
    """Drawing one batch of patches (:class:`tgdpet.data.PatchDataset`) against one training step.

    Three synthetic studies of six count levels (128x128, 144 slices; 48 with
    ``--quick``), the small preset, batch 64 of 32x32x3, structure-weighted
    centres, channels-last Adam step as in ``tgdpet train``; timed in rotation.
    """
    from tgdpet.data import PatchDataset, Study

    depth = 48 if quick else 144
    studies = []
    for k in range(3):
        target = synthetic_volume((depth, 128, 128), seed=k)
        rng = np.random.default_rng(k)
        inputs = [target * rng.gamma(20.0, 0.05, size=target.shape).astype(np.float32) for _ in range(6)]
        studies.append(Study.from_arrays(f"s{k}", target, inputs))
    patches = PatchDataset(studies, patch_size=32, in_slices=3, length=64 * 1000, seed=0, structure_fraction=0.5)
    model = build_model("small").to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = (t.to(device).contiguous(memory_format=torch.channels_last) for t in patches.__getitems__(list(range(64))))
    batch = iter(range(1, 1000))

    def draw() -> None:
        b = next(batch)
        patches.__getitems__(list(range(64 * b, 64 * (b + 1))))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    def calibrate() -> None:  # one of calibrate_batchnorm's batches: a new batch through the train-mode net
        with torch.no_grad():
            model(patches.__getitems__(list(range(64)))[0].to(device).contiguous(memory_format=torch.channels_last))

    seconds = interleaved_medians({"data": draw, "step": step, "calibrate": calibrate}, 3 * repeats, device)
    loop = LoopConfig()  # the default epoch (4096 patches in batches of 64) and its BatchNorm batches
    return {
        "preset": "small",
        "batch": 64,
        "patch": 32,
        "data_ms": 1e3 * seconds["data"],
        "step_ms": 1e3 * seconds["step"],
        "data_share_of_step": seconds["data"] / seconds["step"],
        "bn_batch_ms": 1e3 * seconds["calibrate"],
        "bn_batches": loop.bn_batches,
        "epoch_steps": loop.steps_per_epoch,
        "bn_share_of_epoch": loop.bn_batches * seconds["calibrate"]
        / (loop.steps_per_epoch * (seconds["step"] + seconds["data"])),
    }


def bench_kse(repeats: int) -> dict:
    from tgdpet.kse import score_network

    model = build_model("paper")
    seconds = interleaved_medians({"kse": lambda: score_network(model, 0.3)}, repeats, torch.device("cpu"))
    return {"preset": "paper", "layers_scored": len(model.convs) - 1, "seconds": seconds["kse"]}


# --------------------------------------------------------------------------- memory


def peak_rss_bytes() -> int:
    """This process's peak resident memory.

    Linux's ``VmHWM`` counts this program only; ``ru_maxrss`` would also count
    the parent's memory at the fork that started it (Linux carries it across
    exec), so it is the fallback on other systems only.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def memory_child(preset: str, shape: tuple[int, int, int], device: str, precision: str) -> dict:
    """Run in a fresh process: denoise a synthetic volume and report this process's peak memory."""
    dev = resolve_device(device)
    model = build_model(preset).to(dev).eval()
    rss_start = peak_rss_bytes()
    volume = synthetic_volume(shape)
    start = time.perf_counter()
    out = denoise_array(model, volume, device=dev, precision=precision)
    seconds = time.perf_counter() - start
    return {
        "preset": preset,
        "shape_zyx": list(shape),
        "precision": precision,
        "seconds": seconds,
        "input_output_bytes": volume.nbytes + out.nbytes,
        "rss_after_imports_bytes": rss_start,
        "peak_rss_bytes": peak_rss_bytes(),
        "cuda_peak_allocated_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
    }


def paper_memory_estimate(runs: list[dict]) -> dict:
    """Peak memory of the paper preset on the deep volume, from the runs that are quick to make.

    Denoising a volume holds the input, the output and one batch of
    activations: only the arrays grow with depth, only the activations with
    the preset. So paper(deep) = paper(shallow) + small(deep) - small(shallow).
    """
    small_deep, small_shallow, paper_shallow = runs

    def estimate(key: str) -> int | None:
        if small_deep[key] is None:  # no CUDA figures on the CPU
            return None
        return paper_shallow[key] + small_deep[key] - small_shallow[key]

    return {
        "preset": "paper",
        "shape_zyx": small_deep["shape_zyx"],
        "peak_rss_bytes": estimate("peak_rss_bytes"),
        "cuda_peak_allocated_bytes": estimate("cuda_peak_allocated_bytes"),
    }


def bench_memory(preset: str, shape: tuple[int, int, int], device: torch.device) -> dict:
    """Peak memory of a child process running :func:`memory_child`, which reports it as JSON."""
    args = [sys.executable, __file__, "--memory-child", json.dumps([preset, list(shape), str(device), "auto"])]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def print_report(result: dict) -> None:
    print(f"\n{result['machine']}")
    print("\nMatrix-multiply peak (GFLOP/s, medians, timed in the rotation of each preset's denoisers)")
    print(f"  {'rotation':<10}{'precision':<11}{'torch.mm':>9}{'1x1 conv':>10}{'peak':>7}")
    for preset, peaks in result["peaks"].items():
        for name, p in peaks.items():
            print(
                f"  {preset:<10}{name:<11}{p['torch.mm gflops']:>9.0f}{p['1x1 conv gflops']:>10.0f}"
                f"{p['peak gflops']:>7.0f}"
            )
    print("\nDenoising throughput (medians; ratio and fraction of peak in the same precision)")
    print(
        f"  {'preset':<7}{'variant':<22}{'batch':>6}{'Mvox/s':>9}{'GFLOP/s':>9}{'vs plain':>9}{'of peak':>9}"
        f"{'noise err':>11}"
    )
    for r in result["denoise"]:
        print(
            f"  {r['preset']:<7}{r['variant']:<22}{r['batch_slices']:>6}{r['voxels_per_s'] / 1e6:>9.3f}"
            f"{r['gflops']:>9.0f}{r['speedup_vs_plain']:>8.2f}x{100 * r['fraction_of_peak']:>8.0f}%"
            f"{r['noise_estimate_rel_rms_vs_plain']:>11.1e}"
        )
    t = result["tgd_step"]
    print(
        f"\nTraining step, {t['preset']} preset, batch {t['batch']} of {t['patch']}x{t['patch']}: plain "
        f"{t['plain_ms']:.0f} ms, with TGD {t['tgd_ms']:.0f} ms, ratio {t['ratio']:.3f}"
    )
    for r in result["train_precision"]:
        others = ", ".join(f"{n} {v:.0f} ms ({r['fp32_over'][n]:.2f}x faster)" for n, v in r["ms"].items() if n != "fp32")
        print(f"Training step, {r['preset']} preset, batch 64 of 32x32x3: fp32 {r['ms']['fp32']:.0f} ms, {others}")
    d = result["data"]
    print(
        f"Training data, {d['preset']} preset, batch {d['batch']} of {d['patch']}x{d['patch']}x3: drawing a batch "
        f"{d['data_ms']:.1f} ms, a training step {d['step_ms']:.1f} ms, data {100 * d['data_share_of_step']:.1f} % "
        f"of the step; re-estimating BatchNorm ({d['bn_batches']} batches of {d['bn_batch_ms']:.1f} ms) "
        f"{100 * d['bn_share_of_epoch']:.1f} % of a {d['epoch_steps']}-step epoch"
    )
    k = result["kse"]
    print(f"KSE scores of a whole {k['preset']} network ({k['layers_scored']} layers): {1e3 * k['seconds']:.1f} ms")
    print()
    print_end_to_end(result["end_to_end"])
    print("\nPeak memory of a process denoising a synthetic volume (fast path, auto precision)")
    for m in result["memory"]:
        z, y, x = m["shape_zyx"]
        print(
            f"  {m['preset']:<7}{x}x{y}x{z}: peak RSS {m['peak_rss_bytes'] / GIB:.2f} GiB (after imports "
            f"{m['rss_after_imports_bytes'] / GIB:.2f} GiB; input+output arrays "
            f"{m['input_output_bytes'] / GIB:.2f} GiB)"
            f"  {m['seconds']:.1f} s" + _cuda_memory(m)
        )
    e = result["memory_paper_estimate"]
    z, y, x = e["shape_zyx"]
    print(f"  {e['preset']:<7}{x}x{y}x{z}: peak RSS {e['peak_rss_bytes'] / GIB:.2f} GiB, estimated" + _cuda_memory(e))
    quick_note = " (--quick shrinks the sizes they are set for; run without it to check them)"
    print("\nTargets" + (quick_note if result["quick"] else ""))
    for name, (value, met) in result["targets"].items():
        print(f"  [{'met' if met else 'NOT met'}] {name}: {value}")


def _cuda_memory(m: dict) -> str:
    return f"; CUDA peak {m['cuda_peak_allocated_bytes'] / GIB:.2f} GiB" if m["cuda_peak_allocated_bytes"] else ""


def targets(result: dict, auto: str) -> dict:
    """The issue's targets, each with the measured value and whether it is met."""
    fast = next(r for r in result["denoise"] if r["preset"] == "paper" and r["variant"] == f"fast {auto}")
    tgd = result["tgd_step"]["ratio"] - 1
    small, paper = result["memory"][0], result["memory_paper_estimate"]
    z, y, x = small["shape_zyx"]
    small_mem, paper_mem = (max(m["cuda_peak_allocated_bytes"] or 0, m["peak_rss_bytes"]) for m in (small, paper))
    demo = result["end_to_end"][0]
    return {
        "tgdpet denoise of the demo volume <= 1.3x the network's own time": (
            f"{demo['ratio']:.2f}x ({demo['end to end']:.2f} s against {demo['network']:.2f} s)", demo["ratio"] <= 1.3
        ),
        f"paper preset, fast {auto} >= 50 % of the {auto} matmul peak": (
            f"{100 * fast['fraction_of_peak']:.0f} %", fast["fraction_of_peak"] >= 0.5
        ),
        f"paper preset, fast {auto} >= 3x the plain baseline": (
            f"{fast['speedup_vs_plain']:.2f}x", fast["speedup_vs_plain"] >= 3
        ),
        "TGD training-step overhead < 5 %": (f"{100 * tgd:+.1f} %", tgd < 0.05),
        "training data pipeline <= 15 % of a training step": (
            f"{100 * result['data']['data_share_of_step']:.1f} %", result["data"]["data_share_of_step"] <= 0.15
        ),
        f"peak memory denoising {x}x{y}x{z} < 4 GiB": (
            f"small preset {small_mem / GIB:.2f} GiB measured, paper preset {paper_mem / GIB:.2f} GiB estimated",
            max(small_mem, paper_mem) < 4 * GIB,
        ),
    }


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"{platform.processor() or platform.machine()} CPU ({torch.backends.cpu.get_cpu_capability()}), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="shrink everything to finish in under a minute")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    parser.add_argument("--json", type=output_file, help="also write the results here")
    parser.add_argument("--voxel-sizes", action="store_true",
                        help="only time the built-in model on 4, 2.7 and 2 mm whole-body volumes")
    parser.add_argument("--end-to-end", action="store_true",
                        help="only time tgdpet denoise end to end against the network alone")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        preset, shape, device, precision = json.loads(args.memory_child)
        print(json.dumps(memory_child(preset, tuple(shape), device, precision)))
        return

    device = resolve_device(args.device)
    if args.voxel_sizes:
        print(machine(device))
        print("Built-in model, whole-body volumes (medians of interleaved runs; seconds, ratio to 4 mm on its own grid)")
        for r in bench_voxel_sizes(device, args.quick, 3 if args.quick else 5):
            print(f"  {r['volume']:<28}{' x '.join(map(str, r['shape'])):>16}{r['seconds']:>9.2f} s{r['vs 4 mm']:>7.1f}x")
        return
    if args.end_to_end:
        print(machine(device))
        rows = bench_end_to_end(device, args.quick, 3 if args.quick else 5)
        print_end_to_end(rows)
        if args.json:
            with atomic_file(args.json) as tmp:
                tmp.write_text(json.dumps({"machine": machine(device), "device": str(device), "quick": args.quick,
                                           "end_to_end": rows}, indent=2))  # fmt: skip
        return
    gpu = device.type == "cuda"
    if gpu:  # fp32 rows mean fp32, as in torch.mm; cuDNN would otherwise run fp32 convs in TF32
        torch.backends.cudnn.allow_tf32 = False
    repeats = 3 if args.quick else 5
    auto = DTYPE_NAMES[autocast_dtype(device) or torch.float32]
    result: dict = {"machine": machine(device), "device": str(device), "quick": args.quick}

    n = (4096 if args.quick else 8192) if gpu else (1024 if args.quick else 2048)
    gemms = gemm_variants(device, n, calls=20 if gpu else 4)
    slices = {"paper": 2, "small": 8} if args.quick else {"paper": 8, "small": 32}
    side = 128 if args.quick else 256
    if gpu:
        slices = {k: 8 * v for k, v in slices.items()}
    result["denoise"], result["peaks"] = [], {}
    for preset in ("paper", "small"):
        print(f"Denoising, {preset} preset, with the matrix-multiply peaks...", flush=True)
        rows, peaks = bench_denoise(preset, (slices[preset], side, side), device, repeats, args.compile, gemms)
        result["denoise"] += rows
        result["peaks"][preset] = peaks

    print("TGD training step...", flush=True)
    result["tgd_step"] = bench_tgd(device, args.quick)
    print("Training step per precision...", flush=True)
    result["train_precision"] = bench_train_precision(device, args.quick, 2 * repeats)
    print("Training data pipeline...", flush=True)
    result["data"] = bench_data_pipeline(device, args.quick, repeats)
    print("KSE scoring...", flush=True)
    result["kse"] = bench_kse(repeats)
    print("tgdpet denoise end to end...", flush=True)
    result["end_to_end"] = bench_end_to_end(device, args.quick, repeats)
    print("Peak memory (separate processes)...", flush=True)
    side, deep, shallow = (128, 60, 8) if args.quick else (256, 600, 48)
    runs = [("small", deep), ("small", shallow), ("paper", shallow)]
    result["memory"] = [bench_memory(preset, (z, side, side), device) for preset, z in runs]
    result["memory_paper_estimate"] = paper_memory_estimate(result["memory"])
    result["targets"] = targets(result, auto)

    print_report(result)
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(f"\nWrote {args.json}")


if __name__ == "__main__":
    run(main)
