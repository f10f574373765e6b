"""The table of malformed inputs that every ``tgdpet`` command must refuse cleanly.

One source for two users: ``tests/test_bad_inputs.py`` runs every case
through the real CLI and asserts the contract (exit status 2, one line
``Error: ...`` on stderr, no traceback, nothing written), and
``scripts/bad_inputs_table.py`` runs the same cases to print the table of
``docs/bad-inputs.md``, so the documented messages are the real ones.

Each case builds its bad input in a folder that already holds good ones
(see :func:`build_workspace`) and returns the command line to run there; the
command runs with that folder as the working directory, so messages name
short relative paths.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pydicom
import torch
from click.testing import CliRunner
from helpers import make_volume, write_test_nifti, write_test_series
from safetensors.torch import save_file
from test_data import make_dataset

from tgdpet.checkpoint import save_model
from tgdpet.cli import main
from tgdpet.models import build_model

#: Options that keep any training that does start tiny and fast on the CPU.
FAST = ["--device", "cpu", "--no-amp", "--no-progress", "--patch-size", "16", "--batch-size", "4",
        "--patches-per-epoch", "4", "--epochs", "1"]  # fmt: skip


def build_workspace(root: Path) -> Path:
    """Good inputs the bad ones sit next to: a dataset, a tiny model, a NIfTI scan, a DICOM series."""
    make_dataset(root / "data", n_train=1, n_val=0, shape=(4, 16, 16), halves=True)
    torch.manual_seed(0)
    save_model(root / "model.safetensors", build_model("tiny"), preset="tiny")
    write_test_nifti(root / "scan.nii.gz")
    write_test_series(root / "series")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (folders too, hidden entries too) with a hash of each file's bytes."""
    return {
        str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in sorted(root.rglob("*"))
    }


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(args: list[str], cwd: Path) -> Result:
    """Run ``tgdpet ARGS`` in-process (click's CliRunner) with ``cwd`` as the working directory."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        r = CliRunner().invoke(main, args, catch_exceptions=True)
    finally:
        os.chdir(old)
    stderr = r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):  # a crash: show it like Python would
        import traceback

        stderr += "".join(traceback.format_exception(r.exception))
    return Result(r.exit_code, r.stdout, stderr)


# --------------------------------------------------------------------------- making bad files


def _nifti(path: Path, shape: tuple[int, ...]) -> None:
    nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)).to_filename(path)


def _lying_nifti(path: Path, shape: tuple[int, ...]) -> None:
    """A small NIfTI file whose header claims ``shape``."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 4096)


def _edit_series(folder: Path, edit: Callable[[pydicom.Dataset, int], None]) -> None:
    """Apply ``edit(ds, k)`` to every slice file of a series (k = position in sorted file order)."""
    for k, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        edit(ds, k)
        ds.save_as(f)


def _manifest(root: Path, edit: Callable[[dict], object] | str) -> str:
    """A copy of the workspace's dataset whose manifest ``edit`` changed (or a string replaced); its path."""
    shutil.copytree(root / "data", root / "bad")
    path = root / "bad" / "manifest.json"
    if isinstance(edit, str):
        path.write_text(edit)
    else:
        raw = json.loads(path.read_text())
        edit(raw)
        path.write_text(json.dumps(raw))
    return "bad/manifest.json"


def _yaml(root: Path, text: str) -> str:
    (root / "bad.yaml").write_text(text)
    return "bad.yaml"


class _Payload:
    """Unpickling this would create a file: proof that a model file was unpickled."""

    def __reduce__(self):
        return (Path.touch, (Path("UNPICKLED"),))


def _case_setups() -> dict[str, tuple[str, Callable[[Path], list[str]], str]]:
    """id -> (what is wrong, setup(root) -> command line, regex the message must match)."""
    train = ["train", "data", "-o", "run", *FAST]
    finetune = ["tgd-finetune", "model.safetensors", "data", "-o", "run", *FAST]
    denoise = ["denoise", "--model", "model.safetensors", "--device", "cpu", "--no-progress"]

    def with_file(name: str, make: Callable[[Path], object], args: Callable[[str], list[str]]):
        def setup(root: Path) -> list[str]:
            make(root / name)
            return args(name)

        return setup

    def den(name: str, make: Callable[[Path], object]):
        return with_file(name, make, lambda n: [*denoise, n])

    def series(edit: Callable[[pydicom.Dataset, int], None]):
        def setup(root: Path) -> list[str]:
            shutil.copytree(root / "series", root / "bad_series")
            _edit_series(root / "bad_series", edit)
            return [*denoise, "bad_series"]

        return setup

    def manifest(edit: Callable[[dict], object] | str):
        return lambda root: ["train", _manifest(root, edit), "-o", "run", *FAST]

    def bad_study_image(make: Callable[[Path], object]):
        def edit_and_make(root: Path) -> list[str]:
            args = ["train", _manifest(root, lambda m: None), "-o", "run", *FAST]
            make(root / "bad" / "s000" / "noisy_2.nii.gz")
            return args

        return edit_and_make

    def config(text: str, command: list[str] = train):
        return lambda root: [*command, "--config", _yaml(root, text)]

    def plain(args: list[str]):
        return lambda root: list(args)

    def existing_run(root: Path) -> list[str]:
        (root / "run").mkdir()
        (root / "run" / "config.yaml").write_text("seed: 0\n")
        return train

    def mkdir(name: str, args: list[str]):
        return lambda root: ((root / name).mkdir(), list(args))[1]

    def two_series(root: Path) -> list[str]:
        (root / "two").mkdir()
        write_test_series(root / "two" / "a")
        write_test_series(root / "two" / "b")
        return [*denoise, "two"]

    def existing_output(root: Path) -> list[str]:
        (root / "scan_denoised.nii.gz").write_bytes(b"an earlier result")
        return [*denoise, "scan.nii.gz"]

    def nan_volume(path: Path) -> None:
        vol = make_volume()
        vol.data[3, 5, 5] = np.nan
        write_test_nifti(path, vol)

    def foreign_safetensors(path: Path) -> None:
        save_file({"encoder.weight": torch.zeros(4, 4)}, path, metadata={"framework": "someone-else"})

    def other_shapes(root: Path) -> list[str]:
        args = ["train", _manifest(root, lambda m: None), "-o", "run", *FAST]
        vol = make_volume(shape=(4, 20, 16))
        write_test_nifti(root / "bad" / "s000" / "noisy_2.nii.gz", vol, overwrite=True)
        return args

    return {
        # ------------------------------------------------ command-line values
        "negative-phi": ("`--phi -0.1`", plain(["score-kse", "model.safetensors", "--phi", "-0.1"]), "between 0 and 1"),
        "phi-above-1": ("`--phi 1.5` for tgd-finetune", plain([*finetune, "--phi", "1.5"]), "between 0 and 1"),
        "phis-not-numbers": ("`--phis a,b`", plain(["score-kse", "model.safetensors", "--drop", "--phis", "a,b"]),
                             "comma-separated numbers"),
        "zero-epochs": ("`--epochs 0`", plain([*train, "--epochs", "0"]), "epochs must be positive"),
        "negative-lr": ("`--lr -0.001`", plain([*train, "--lr", "-0.001"]), "lr must be positive"),
        "batch-above-epoch": ("`--batch-size 16 --patches-per-epoch 8`",
                              plain([*train, "--batch-size", "16", "--patches-per-epoch", "8"]), "smaller than one batch"),
        "patch-above-image": ("`--patch-size 64` on 16 x 16 slices", plain([*train, "--patch-size", "64"]),
                              "smaller than the 64x64 patches"),
        "unknown-preset": ("`--preset huge`", plain([*train, "--preset", "huge"]), "unknown preset 'huge'"),
        "unknown-device": ("`--device tpu`", plain([*train, "--device", "tpu"]), "unknown device 'tpu'"),
        "absent-gpu": ("`--device cuda:7`", plain([*denoise, "--device", "cuda:7", "scan.nii.gz"]), "cuda:7"),
        "fp16-on-cpu": ("`--precision fp16 --device cpu`", plain([*denoise, "--precision", "fp16", "scan.nii.gz"]),
                        "fp16 is for CUDA"),
        "zero-batch-slices": ("`--batch-slices 0`", plain([*denoise, "--batch-slices", "0", "scan.nii.gz"]),
                              "--batch-slices"),
        "unknown-method": ("`--method sgd`", plain([*finetune, "--method", "sgd"]), "'sgd' is not one of"),
        "missing-data": ("a data path that does not exist", plain(["train", "nowhere", "-o", "run", *FAST]),
                         "'nowhere' does not exist"),
        "empty-data-folder": ("an empty folder as training data", mkdir("empty", ["train", "empty", "-o", "run", *FAST]),
                              "no dataset manifest"),
        "resume-nothing": ("`--resume` where no run was started", plain([*train, "--resume"]), "nothing to resume"),
        "run-exists": ("`--out` holding an earlier run, without `--overwrite`", existing_run, "already holds files"),
        # ------------------------------------------------ model files
        "model-missing": ("`--model` that does not exist", plain([*denoise[:1], "--model", "gone.safetensors",
                                                                 "--device", "cpu", "scan.nii.gz"]), "does not exist"),
        "model-pickle": ("a torch.save pickle (with a code payload) as model",
                         with_file("evil.pt", lambda p: torch.save({"w": _Payload()}, p),
                                   lambda n: [*denoise[:1], "--model", n, "--device", "cpu", "scan.nii.gz"]),
                         "PyTorch pickle checkpoint"),
        "model-foreign": ("a safetensors file from another project",
                          with_file("other.safetensors", foreign_safetensors, lambda n: ["score-kse", n]),
                          "not a tgdpet model"),
        "model-truncated": ("a model file cut short",
                            with_file("cut.safetensors", lambda p: p.write_bytes((p.parent / "model.safetensors")
                                                                                  .read_bytes()[:5000]),
                                      lambda n: ["tgd-finetune", n, "data", "-o", "run", *FAST]),
                            "truncated"),
        # ------------------------------------------------ NIfTI
        "nifti-missing": ("a scan that does not exist", plain([*denoise, "gone.nii.gz"]), "does not exist"),
        "nifti-nan": ("a NaN voxel in the scan", den("nan.nii.gz", nan_volume), "NaN or infinite voxels"),
        "nifti-4d": ("a 4-D NIfTI (2 frames)", den("dyn.nii.gz", lambda p: _nifti(p, (16, 16, 4, 2))), "4-D with 2 frames"),
        "nifti-2d": ("a 2-D NIfTI", den("flat.nii", lambda p: _nifti(p, (16, 16))), "2-D image"),
        "nifti-truncated": ("a .nii cut in half",
                            den("short.nii", lambda p: p.write_bytes((_nifti(p, (16, 16, 8)), p.read_bytes())[1][:2000])),
                            "is truncated"),
        "nifti-garbage": ("random bytes named .nii.gz", den("noise.nii.gz", lambda p: p.write_bytes(os.urandom(700))),
                          "not a readable NIfTI"),
        "nifti-huge": ("a NIfTI header claiming 4096^3 voxels", den("huge.nii", lambda p: _lying_nifti(p, (4096,) * 3)),
                       "more than the"),
        "nifti-bomb": ("a .nii.gz claiming 512^3 voxels in 5 kB", den("bomb.nii.gz", lambda p: _lying_nifti(p, (512,) * 3)),
                       "can hold"),
        "not-an-image": ("a text file as scan", den("notes.txt", lambda p: p.write_text("hello\n")),
                         "neither a NIfTI file"),
        "output-format": ("`-o out.nrrd`", plain([*denoise, "scan.nii.gz", "-o", "out.nrrd"]), "looks like a .nrrd"),
        "output-exists": ("an existing output, without `--overwrite`", existing_output, "already exists"),
        # ------------------------------------------------ DICOM
        "dicom-empty": ("an empty folder as scan", mkdir("empty", [*denoise, "empty"]), "is empty"),
        "dicom-missing-slice": ("a series with a slice missing",
                                lambda root: (shutil.copytree(root / "series", root / "bad_series"),
                                              sorted((root / "bad_series").iterdir())[4].unlink(),
                                              [*denoise, "bad_series"])[2],
                                r"1 slice\(s\) missing"),
        "dicom-ct": ("a CT series", series(lambda ds, k: setattr(ds, "Modality", "CT")), "not PET"),
        "dicom-two-series": ("a folder holding two series", two_series, "holds 2 series"),
        "dicom-truncated": ("a slice with truncated pixel data",
                            series(lambda ds, k: setattr(ds, "PixelData", ds.PixelData[:100]) if k == 3 else None),
                            "truncated"),
        "dicom-huge": ("a slice header claiming 60000 x 60000 pixels",
                       series(lambda ds, k: (setattr(ds, "Rows", 60000), setattr(ds, "Columns", 60000)) if k == 0
                              else None),
                       "declares 60000 x 60000 pixels"),
        # ------------------------------------------------ manifests
        "manifest-missing-file": ("a manifest naming a file that is not there",
                                  manifest(lambda m: m["studies"][0]["inputs"].append("s000/gone.nii.gz")),
                                  "gone.nii.gz does not exist"),
        "manifest-not-json": ("a manifest that is not JSON", manifest("{studies: ["), "not valid JSON"),
        "manifest-no-studies": ("a manifest listing no studies", manifest(lambda m: m.update(studies=[])),
                                "lists no studies"),
        "manifest-no-target": ("a study without `target`", manifest(lambda m: m["studies"][0].pop("target")),
                               "lacks 'target'"),
        "manifest-bad-split": ("a study in split `training`", manifest(lambda m: m["studies"][0].update(split="training")),
                               "unknown split 'training'"),
        "manifest-duplicate-id": ("two studies with one id",
                                  manifest(lambda m: m["studies"].append(dict(m["studies"][0]))), "twice"),
        "manifest-4d-image": ("a manifest naming a 4-D NIfTI", bad_study_image(lambda p: _nifti(p, (16, 16, 4, 2))),
                              "4-D with 2 frames"),
        "manifest-grid-mismatch": ("an input on another grid than its target", other_shapes, "same grid"),
        # ------------------------------------------------ configs
        "config-unknown-key": ("a `--config` with an unknown key", config("epochs: 2\nlearning_rate: 0.1\n"),
                               "unknown keys learning_rate"),
        "config-wrong-type": ("a `--config` value of the wrong type", config("lr: fast\n"), "'lr' must be a float"),
        "config-not-mapping": ("a `--config` that is a list", config("- 1\n- 2\n"), "must hold a mapping"),
        "config-not-yaml": ("a `--config` that is not YAML", config("epochs: [1, 2\n"), "not valid YAML"),
        "config-bad-phi": ("a `--config` with `phi: 2`", config("phi: 2\n", finetune), "between 0 and 1"),
        "config-missing": ("a `--config` that does not exist", plain([*train, "--config", "gone.yaml"]),
                           "'gone.yaml' does not exist"),
    }


@dataclass(frozen=True)
class Case:
    """One malformed input: what is wrong, how to build it, and what the message must say."""

    id: str
    what: str
    setup: Callable[[Path], list[str]]
    match: str


CASES: list[Case] = [Case(k, what, setup, match) for k, (what, setup, match) in _case_setups().items()]


def command_text(args: list[str]) -> str:
    """The command line as a user would type it, without the options that only keep the tests fast."""
    n = len(FAST)
    for i in range(len(args) - n + 1):
        if args[i : i + n] == FAST:
            args = args[:i] + args[i + n :]
            break
    return "tgdpet " + shlex.join(a for a in args if a != "--no-progress")
