"""The table of malformed inputs that every ``tgdpet`` command must refuse cleanly.

One source for two users: ``tests/test_bad_inputs.py`` runs every case
through the real CLI and asserts the contract (exit status 2, one line
``Error: ...`` on stderr, no traceback, nothing written), and
``scripts/bad_inputs_table.py`` runs the same cases to print the table of
``docs/bad-inputs.md``, so the documented messages are the real ones.

A case is a function registered with :func:`case`: it builds its bad input
in a folder that already holds good ones (see :func:`build_workspace`) and
returns the command line to run there. The command runs with that folder as
the working directory, so messages name short relative paths. Case ids start
with the kind of input (``nifti-``, ``dicom-``, ``manifest-``, ``config-``,
``model-``, ``cli-``, ``simulate-``, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pydicom
import torch
from click.testing import CliRunner
from helpers import lying_nifti, make_volume, write_test_nifti, write_test_series
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
class Case:
    """One malformed input: what is wrong, how to build it, and what the message must say."""

    id: str
    what: str
    setup: Callable[[Path], list[str]]
    match: str


CASES: list[Case] = []


def case(what: str, match: str) -> Callable[[Callable[[Path], list[str]]], Callable[[Path], list[str]]]:
    """Register the decorated ``setup(root) -> command line`` as a case named after it (``_`` -> ``-``).

    ``match`` is a regular expression the one-line message must contain.
    """

    def register(setup: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
        CASES.append(Case(setup.__name__.replace("_", "-"), what, setup, match))
        return setup

    return register


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(args: list[str], cwd: Path) -> Result:
    """Run ``tgdpet ARGS`` in-process (click's CliRunner) with ``cwd`` as the working directory.

    Its stderr is what a user would see: warnings Python would print and the
    traceback of a crash are added to it.
    """
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = CliRunner().invoke(main, args, prog_name="tgdpet", catch_exceptions=True)
    finally:
        os.chdir(old)
    stderr = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught) + r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        stderr += "".join(traceback.format_exception(r.exception))
    return Result(r.exit_code, r.stdout, stderr)


# --------------------------------------------------------------------------- making bad files


def _nifti(path: Path, shape: tuple[int, ...]) -> Path:
    nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)).to_filename(path)
    return path


def _with_voxel(path: Path, value: float) -> Path:
    volume = make_volume()
    volume.data[3, 5, 5] = value
    return write_test_nifti(path, volume)


def _bad_series(root: Path, edit: Callable[[pydicom.Dataset, int], None]) -> str:
    """A copy of the workspace's series with ``edit(ds, k)`` applied to slice file k (sorted order)."""
    shutil.copytree(root / "series", root / "bad_series")
    for k, f in enumerate(sorted((root / "bad_series").iterdir())):
        ds = pydicom.dcmread(f)
        edit(ds, k)
        ds.save_as(f)
    return "bad_series"


def _bad_manifest(root: Path, edit: Callable[[dict], object] | str = "") -> str:
    """A copy of the workspace's dataset whose manifest ``edit`` changed (or a string replaced); its path."""
    shutil.copytree(root / "data", root / "bad")
    path = root / "bad" / "manifest.json"
    if isinstance(edit, str):
        path.write_text(edit or path.read_text())
    else:
        raw = json.loads(path.read_text())
        edit(raw)
        path.write_text(json.dumps(raw))
    return "bad/manifest.json"


def _without_voxel_size(path: Path) -> Path:
    """A NIfTI file whose pixdim is 0 and whose qform and sform codes are 0, patched in its bytes."""
    nib.Nifti1Image(np.ones((16, 16, 4), np.float32), np.eye(4)).to_filename(path)
    raw = bytearray(path.read_bytes())
    raw[80:92] = np.zeros(3, "<f4").tobytes()  # pixdim[1:4] (NIfTI-1: pixdim at byte 76)
    raw[252:256] = np.zeros(2, "<i2").tobytes()  # qform_code, sform_code
    path.write_bytes(bytes(raw))
    return path


def _with_nan_weights(src: Path, dest: Path, tensor: str) -> Path:
    """A copy of a safetensors file whose ``tensor`` bytes are all 0xFF (NaN in float32), as bit rot leaves them."""
    raw = bytearray(src.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8 : 8 + header_len])[tensor]["data_offsets"]
    raw[8 + header_len + begin : 8 + header_len + end] = b"\xff" * (end - begin)
    dest.write_bytes(bytes(raw))
    return dest


def _yaml(root: Path, text: str) -> str:
    (root / "bad.yaml").write_text(text)
    return "bad.yaml"


class _Payload:
    """Unpickling this would create a file: proof that a model file was unpickled."""

    def __reduce__(self):
        return (Path.touch, (Path("UNPICKLED"),))


TRAIN = ["train", "data", "-o", "run", *FAST]
FINETUNE = ["tgd-finetune", "model.safetensors", "data", "-o", "run", *FAST]
DENOISE = ["denoise", "--model", "model.safetensors", "--device", "cpu", "--no-progress"]
SIMULATE = ["simulate", "sim", "--studies", "1", "--slices", "4", "--device", "cpu", "--no-progress"]
SMALL_SIMULATE = [*SIMULATE, "--size", "16"]


# --------------------------------------------------------------------------- command-line values


@case("`--phi -0.1`", "between 0 and 1")
def cli_negative_phi(root: Path) -> list[str]:
    return ["score-kse", "model.safetensors", "--phi", "-0.1"]


@case("`--phi 1.5` for tgd-finetune", "between 0 and 1")
def cli_phi_above_1(root: Path) -> list[str]:
    return [*FINETUNE, "--phi", "1.5"]


@case("`--phis a,b`", "comma-separated numbers")
def cli_phis_not_numbers(root: Path) -> list[str]:
    return ["score-kse", "model.safetensors", "--drop", "--phis", "a,b"]


@case("`--epochs 0`", "epochs must be positive")
def cli_zero_epochs(root: Path) -> list[str]:
    return [*TRAIN, "--epochs", "0"]


@case("`--lr -0.001`", "lr must be positive")
def cli_negative_lr(root: Path) -> list[str]:
    return [*TRAIN, "--lr", "-0.001"]


@case("`--batch-size 16 --patches-per-epoch 8`", "smaller than one batch")
def cli_batch_above_epoch(root: Path) -> list[str]:
    return [*TRAIN, "--batch-size", "16", "--patches-per-epoch", "8"]


@case("`--patch-size 64` on 16 x 16 slices", "smaller than the 64x64 patches")
def cli_patch_above_image(root: Path) -> list[str]:
    return [*TRAIN, "--patch-size", "64"]


@case("`--preset huge`", "unknown preset 'huge'")
def cli_unknown_preset(root: Path) -> list[str]:
    return [*TRAIN, "--preset", "huge"]


@case("`--device tpu`", "unknown device 'tpu'")
def cli_unknown_device(root: Path) -> list[str]:
    return [*TRAIN, "--device", "tpu"]


@case("`--device cuda:7` (no such GPU)", "cuda:7")
def cli_absent_gpu(root: Path) -> list[str]:
    return ["denoise", "--model", "model.safetensors", "--device", "cuda:7", "scan.nii.gz"]


@case("`--precision fp16 --device cpu`", "fp16 is for CUDA")
def cli_fp16_on_cpu(root: Path) -> list[str]:
    return [*DENOISE, "--precision", "fp16", "scan.nii.gz"]


@case("`--batch-slices 0`", "--batch-slices")
def cli_zero_batch_slices(root: Path) -> list[str]:
    return [*DENOISE, "--batch-slices", "0", "scan.nii.gz"]


@case("`--method sgd`", "'sgd' is not one of")
def cli_unknown_method(root: Path) -> list[str]:
    return [*FINETUNE, "--method", "sgd"]


@case("`-o` with two inputs", "single input")
def cli_out_for_two_inputs(root: Path) -> list[str]:
    return [*DENOISE, "scan.nii.gz", "series", "-o", "out.nii.gz"]


@case("a data path that does not exist", "'nowhere' does not exist")
def cli_missing_data(root: Path) -> list[str]:
    return ["train", "nowhere", "-o", "run", *FAST]


@case("an empty folder as training data", "no dataset manifest")
def cli_empty_data_folder(root: Path) -> list[str]:
    (root / "empty").mkdir()
    return ["train", "empty", "-o", "run", *FAST]


@case("`--resume` where no run was started", "nothing to resume")
def cli_resume_nothing(root: Path) -> list[str]:
    return [*TRAIN, "--resume"]


@case("`--out` holding an earlier run, without `--overwrite`", "already holds files")
def cli_run_exists(root: Path) -> list[str]:
    (root / "run").mkdir()
    (root / "run" / "config.yaml").write_text("seed: 0\n")
    return TRAIN


# --------------------------------------------------------------------------- model files


@case("`--model` that does not exist", "runs/gone.safetensors does not exist")
def model_missing(root: Path) -> list[str]:
    return ["denoise", "--model", "runs/gone.safetensors", "--device", "cpu", "scan.nii.gz"]


@case("`--model` that is neither a file nor a built-in model's name", "is neither a file nor a built-in model's name")
def model_unknown_name(root: Path) -> list[str]:
    return ["denoise", "--model", "dncnn-sharp", "--device", "cpu", "scan.nii.gz"]


@case("a torch.save pickle (with a code payload) as model", "PyTorch pickle checkpoint")
def model_pickle(root: Path) -> list[str]:
    torch.save({"convs.0.weight": _Payload()}, root / "evil.pt")
    return ["denoise", "--model", "evil.pt", "--device", "cpu", "scan.nii.gz"]


@case("a pickle as model, and the output exists too: the model is named first", "PyTorch pickle checkpoint")
def model_pickle_and_output_exists(root: Path) -> list[str]:
    torch.save({"convs.0.weight": _Payload()}, root / "evil.pt")
    (root / "scan_denoised.nii.gz").write_bytes(b"an earlier result")
    return ["denoise", "--model", "evil.pt", "--device", "cpu", "scan.nii.gz"]


@case("`demo` with a pickle as model into an existing folder: the model is named first", "PyTorch pickle checkpoint")
def model_pickle_demo_output_exists(root: Path) -> list[str]:
    torch.save({"convs.0.weight": _Payload()}, root / "evil.pt")
    (root / "tgdpet-demo").mkdir()
    return ["demo", "--model", "evil.pt", "--device", "cpu", "--no-progress"]


@case("a safetensors file from another project", "not a tgdpet model")
def model_foreign(root: Path) -> list[str]:
    save_file({"encoder.weight": torch.zeros(4, 4)}, root / "other.safetensors", metadata={"framework": "other"})
    return ["score-kse", "other.safetensors"]


@case("a NIfTI image renamed .safetensors as model", "is a NIfTI image, not a tgdpet model file")
def model_nifti_renamed(root: Path) -> list[str]:
    _nifti(root / "image.nii", (16, 16, 4)).rename(root / "image.safetensors")
    return ["denoise", "--model", "image.safetensors", "--device", "cpu", "scan.nii.gz"]


@case("a model file with corrupted bytes (NaN weights)", "the file is damaged or the training run")
def model_corrupted_bytes(root: Path) -> list[str]:
    _with_nan_weights(root / "model.safetensors", root / "rot.safetensors", "convs.0.weight")
    return ["denoise", "--model", "rot.safetensors", "--device", "cpu", "scan.nii.gz"]


@case("a model file cut short", "truncated")
def model_truncated(root: Path) -> list[str]:
    (root / "cut.safetensors").write_bytes((root / "model.safetensors").read_bytes()[:5000])
    return ["tgd-finetune", "cut.safetensors", "data", "-o", "run", *FAST]


# --------------------------------------------------------------------------- NIfTI


@case("a scan that does not exist", "does not exist")
def nifti_missing(root: Path) -> list[str]:
    return [*DENOISE, "gone.nii.gz"]


@case("a NaN voxel in the scan", r"NaN or infinite voxels; replace them .* save the image again\.$")
def nifti_nan(root: Path) -> list[str]:
    return [*DENOISE, _with_voxel(root / "nan.nii.gz", np.nan).name]


@case("an infinite voxel in the scan", "NaN or infinite voxels")
def nifti_inf(root: Path) -> list[str]:
    return [*DENOISE, _with_voxel(root / "inf.nii", np.inf).name]


@case("a frame a 4-D NIfTI does not have (--frame 2 of 2)", "frame 2 does not exist")
def nifti_4d(root: Path) -> list[str]:
    return [*DENOISE, _nifti(root / "dyn.nii.gz", (16, 16, 4, 2)).name, "--frame", "2"]


@case("a 5-D NIfTI", "5-D image")
def nifti_5d(root: Path) -> list[str]:
    return [*DENOISE, _nifti(root / "five.nii.gz", (16, 16, 4, 2, 2)).name]


@case("a 2-D NIfTI", "2-D image")
def nifti_2d(root: Path) -> list[str]:
    return [*DENOISE, _nifti(root / "flat.nii", (16, 16)).name]


@case("a .nii cut short", "is truncated")
def nifti_truncated(root: Path) -> list[str]:
    whole = _nifti(root / "short.nii", (16, 16, 8))
    whole.write_bytes(whole.read_bytes()[:2000])
    return [*DENOISE, "short.nii"]


@case("random bytes named .nii.gz", "not a readable NIfTI")
def nifti_garbage(root: Path) -> list[str]:
    (root / "noise.nii.gz").write_bytes(np.random.default_rng(0).bytes(700))
    return [*DENOISE, "noise.nii.gz"]


@case("a NIfTI header claiming 4096^3 voxels", "more than the")
def nifti_huge(root: Path) -> list[str]:
    return [*DENOISE, lying_nifti(root / "huge.nii", (4096,) * 3).name]


@case("a .nii.gz claiming 512^3 voxels in 5 kB", "can hold")
def nifti_bomb(root: Path) -> list[str]:
    return [*DENOISE, lying_nifti(root / "bomb.nii.gz", (512,) * 3).name]


@case("a text file as scan", "neither a NIfTI file")
def nifti_not_an_image(root: Path) -> list[str]:
    (root / "notes.txt").write_text("hello\n")
    return [*DENOISE, "notes.txt"]


@case("`-o out.nrrd`", "tgdpet cannot write out.nrrd")
def nifti_output_format(root: Path) -> list[str]:
    return [*DENOISE, "scan.nii.gz", "-o", "out.nrrd"]


@case("`-o out.png` (an image format tgdpet does not write)", "tgdpet cannot write out.png")
def nifti_output_png(root: Path) -> list[str]:
    return [*DENOISE, "scan.nii.gz", "-o", "out.png"]


@case("an existing output, without `--overwrite`", "already exists")
def nifti_output_exists(root: Path) -> list[str]:
    (root / "scan_denoised.nii.gz").write_bytes(b"an earlier result")
    return [*DENOISE, "scan.nii.gz"]


@case("a NIfTI without a voxel size (pixdim 0, no qform or sform)", "no usable voxel size")
def nifti_no_voxel_size(root: Path) -> list[str]:
    return [*DENOISE, _without_voxel_size(root / "nosize.nii").name]


@case("`-o result` (no extension: a DICOM folder) for a NIfTI input", "its result is NIfTI: name the output result.nii.gz")
def nifti_output_as_dicom(root: Path) -> list[str]:
    return [*DENOISE, "scan.nii.gz", "-o", "result"]


@case("`-o` in a folder that cannot be written", "cannot write into the folder /sys")
def nifti_output_unwritable(root: Path) -> list[str]:
    return [*DENOISE, "scan.nii.gz", "-o", "/sys/tgdpet-test-out.nii.gz"]


@case("`--out-dir` that cannot be created", "cannot create --out-dir /sys/tgdpet-test-out")
def nifti_out_dir_unwritable(root: Path) -> list[str]:
    return [*DENOISE, "scan.nii.gz", "--out-dir", "/sys/tgdpet-test-out"]


@case("`demo -o` in a folder that cannot be written", "cannot write into the folder /sys")
def demo_output_unwritable(root: Path) -> list[str]:
    return ["demo", "--model", "model.safetensors", "--device", "cpu", "--no-progress", "-o", "/sys/tgdpet-test-demo"]


@case("`demo --overwrite` onto a folder holding someone's own files", "not the files of a tgdpet demo .notes.txt.")
def demo_overwrite_foreign_folder(root: Path) -> list[str]:
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("my own notes\n")
    return ["demo", "--model", "model.safetensors", "--device", "cpu", "--no-progress", "-o", "mine", "--overwrite"]


# --------------------------------------------------------------------------- DICOM


@case("an empty folder as scan", "is empty")
def dicom_empty_folder(root: Path) -> list[str]:
    (root / "empty").mkdir()
    return [*DENOISE, "empty"]


@case("a series with a slice missing", r"1 slice\(s\) missing")
def dicom_missing_slice(root: Path) -> list[str]:
    shutil.copytree(root / "series", root / "bad_series")
    sorted((root / "bad_series").iterdir())[4].unlink()
    return [*DENOISE, "bad_series"]


@case("a series without its first slice (NumberOfSlices says 8)", r"NumberOfSlices 8 but holds 7 slices \(ImageIndex 2 to 8\)")
def dicom_first_slice_missing(root: Path) -> list[str]:
    shutil.copytree(root / "series", root / "bad_series")
    sorted((root / "bad_series").iterdir())[0].unlink()
    return [*DENOISE, "bad_series"]


@case("a series without its last slice (NumberOfSlices says 8)", r"NumberOfSlices 8 but holds 7 slices \(ImageIndex 1 to 7\)")
def dicom_last_slice_missing(root: Path) -> list[str]:
    shutil.copytree(root / "series", root / "bad_series")
    sorted((root / "bad_series").iterdir())[-1].unlink()
    return [*DENOISE, "bad_series"]


@case("one slice with another PatientID in the series", "PatientID 'someone else' .*mixes two patients")
def dicom_other_patient(root: Path) -> list[str]:
    return [*DENOISE, _bad_series(root, lambda ds, k: setattr(ds, "PatientID", "someone else") if k == 3 else None)]


@case("one slice of another study in the series", "StudyInstanceUID .*mixes two studies")
def dicom_other_study(root: Path) -> list[str]:
    return [*DENOISE, _bad_series(root, lambda ds, k: setattr(ds, "StudyInstanceUID", "1.2.3.4") if k == 5 else None)]


@case("a series folder holding only a hidden .tmp-* leftover", "only hidden entries .a .tmp-")
def dicom_only_leftover(root: Path) -> list[str]:
    (root / "left").mkdir()
    (root / "left" / ".tmp-slice_0001.dcm-x").write_bytes(b"half a slice")
    return [*DENOISE, "left"]


@case("`-o mine --overwrite` onto a folder holding someone's own files", "not the slices of a DICOM series tgdpet wrote")
def dicom_overwrite_foreign_folder(root: Path) -> list[str]:
    (root / "mine").mkdir()
    (root / "mine" / "thesis.docx").write_bytes(b"years of work")
    return [*DENOISE, "series", "-o", "mine", "--overwrite"]


@case("a CT series", "not PET")
def dicom_ct(root: Path) -> list[str]:
    return [*DENOISE, _bad_series(root, lambda ds, k: setattr(ds, "Modality", "CT"))]


@case("a folder holding the files of two series side by side", "holds 2 series: .*; give one file of the series")
def dicom_two_series(root: Path) -> list[str]:
    (root / "two").mkdir()
    for name in ("a", "b"):  # in subfolders they would be a study tree, denoised series by series
        for f in write_test_series(root / name):
            f.rename(root / "two" / f"{name}_{f.name}")
        (root / name).rmdir()
    return [*DENOISE, "two"]


@case("a slice with truncated pixel data", "truncated")
def dicom_truncated(root: Path) -> list[str]:
    return [*DENOISE, _bad_series(root, lambda ds, k: setattr(ds, "PixelData", ds.PixelData[:100]) if k == 3 else None)]


@case("a RescaleSlope that overflows float32 (1e39)", "beyond the range of float32")
def dicom_slope_overflow(root: Path) -> list[str]:
    return [*DENOISE, _bad_series(root, lambda ds, k: setattr(ds, "RescaleSlope", "1e39") if k == 2 else None)]


@case("one slice of a series with RescaleSlope `nan`", "has RescaleSlope nan, which scales no value")
def dicom_slope_nan(root: Path) -> list[str]:
    return [*DENOISE, _bad_series(root, lambda ds, k: setattr(ds, "RescaleSlope", "nan") if k == 2 else None)]


@case("PixelSpacing `nan` on every slice", r"no valid PixelSpacing \(0028,0030\)")
def dicom_spacing_nan(root: Path) -> list[str]:
    return [*DENOISE, _bad_series(root, lambda ds, k: setattr(ds, "PixelSpacing", ["nan", "nan"]))]


@case("one slice of a series without RescaleSlope", r"has no RescaleSlope \(0028,1053\)")
def dicom_slope_missing(root: Path) -> list[str]:
    return [*DENOISE, _bad_series(root, lambda ds, k: delattr(ds, "RescaleSlope") if k == 2 else None)]


@case("a slice header claiming 60000 x 60000 pixels", "declares 60000 x 60000 pixels")
def dicom_huge(root: Path) -> list[str]:
    def claim(ds: pydicom.Dataset, k: int) -> None:
        if k == 0:
            ds.Rows = ds.Columns = 60000

    return [*DENOISE, _bad_series(root, claim)]


# --------------------------------------------------------------------------- manifests


@case("a manifest naming a file that is not there", "gone.nii.gz does not exist")
def manifest_missing_file(root: Path) -> list[str]:
    manifest = _bad_manifest(root, lambda m: m["studies"][0]["inputs"].append("s000/gone.nii.gz"))
    return ["train", manifest, "-o", "run", *FAST]


@case("a manifest that is not JSON", "not valid JSON")
def manifest_not_json(root: Path) -> list[str]:
    return ["train", _bad_manifest(root, "{studies: ["), "-o", "run", *FAST]


@case("a manifest listing no studies", "lists no studies")
def manifest_no_studies(root: Path) -> list[str]:
    return ["train", _bad_manifest(root, lambda m: m.update(studies=[])), "-o", "run", *FAST]


@case("a study without `target`", "lacks 'target'")
def manifest_no_target(root: Path) -> list[str]:
    return ["train", _bad_manifest(root, lambda m: m["studies"][0].pop("target")), "-o", "run", *FAST]


@case("a study in split `training`", "unknown split 'training'")
def manifest_bad_split(root: Path) -> list[str]:
    return ["train", _bad_manifest(root, lambda m: m["studies"][0].update(split="training")), "-o", "run", *FAST]


@case("two studies with one id", "twice")
def manifest_duplicate_id(root: Path) -> list[str]:
    return ["train", _bad_manifest(root, lambda m: m["studies"].append(dict(m["studies"][0]))), "-o", "run", *FAST]


@case("a manifest naming a 4-D NIfTI", "4-D with 2 frames")
def manifest_4d_image(root: Path) -> list[str]:
    manifest = _bad_manifest(root)
    _nifti(root / "bad" / "s000" / "noisy_2.nii.gz", (16, 16, 4, 2))
    return ["train", manifest, "-o", "run", *FAST]


@case("an input on another grid than its target", "same grid")
def manifest_grid_mismatch(root: Path) -> list[str]:
    manifest = _bad_manifest(root)
    write_test_nifti(root / "bad" / "s000" / "noisy_2.nii.gz", make_volume(shape=(4, 20, 16)), overwrite=True)
    return ["train", manifest, "-o", "run", *FAST]


# --------------------------------------------------------------------------- n2n-online, evaluate, simulate


@case("Noise2Noise halves on different grids", "different grids")
def n2n_halves_on_two_grids(root: Path) -> list[str]:
    write_test_nifti(root / "half1.nii.gz", make_volume(shape=(8, 16, 16)))
    write_test_nifti(root / "half2.nii.gz", make_volume(shape=(8, 20, 16)))
    return ["n2n-online", "model.safetensors", "half1.nii.gz", "half2.nii.gz", "-o", "out.nii.gz", *FAST]


@case("Noise2Noise halves of one size but at different positions", "affines differ")
def n2n_halves_at_two_positions(root: Path) -> list[str]:
    write_test_nifti(root / "half1.nii.gz", make_volume(shape=(8, 16, 16)))
    write_test_nifti(root / "half2.nii.gz", make_volume(shape=(8, 16, 16), origin=(0.0, 0.0, 40.0)))
    return ["n2n-online", "model.safetensors", "half1.nii.gz", "half2.nii.gz", "-o", "out.nii.gz", *FAST]


@case("Noise2Noise halves that are two different images", "do not look like one scan")
def n2n_halves_of_two_images(root: Path) -> list[str]:
    one = make_volume(shape=(8, 16, 16))
    write_test_nifti(root / "half1.nii.gz", one)
    write_test_nifti(root / "half2.nii.gz", one.with_data(np.ascontiguousarray(one.data[::-1, ::-1, ::-1])))
    return ["n2n-online", "model.safetensors", "half1.nii.gz", "half2.nii.gz", "-o", "out.nii.gz", *FAST]


@case("Noise2Noise halves with different counts (one in other units)", "differ in mean uptake")
def n2n_halves_with_other_counts(root: Path) -> list[str]:
    one = make_volume(shape=(8, 16, 16))
    write_test_nifti(root / "half1.nii.gz", one)
    write_test_nifti(root / "half2.nii.gz", one.with_data(one.data * np.float32(2.0)))
    return ["n2n-online", "model.safetensors", "half1.nii.gz", "half2.nii.gz", "-o", "out.nii.gz", *FAST]


@case("`n2n-online -o` without an extension for NIfTI halves", "so its result is NIfTI")
def n2n_output_as_dicom(root: Path) -> list[str]:
    one = make_volume(shape=(8, 16, 16))
    write_test_nifti(root / "half1.nii.gz", one)
    write_test_nifti(root / "half2.nii.gz", one)
    return ["n2n-online", "model.safetensors", "half1.nii.gz", "half2.nii.gz", "-o", "result", *FAST]


@case("`n2n-online --config` asking for a detail-weighted loss, whose weights would read the noisy half as clean",
      "trains with plain MSE: detail_weight and noise_relative_loss read the target as the clean image")
def n2n_config_with_a_detail_weight(root: Path) -> list[str]:
    one = make_volume(shape=(8, 16, 16))
    write_test_nifti(root / "half1.nii.gz", one)
    write_test_nifti(root / "half2.nii.gz", one)
    (root / "n2n.yaml").write_text("detail_weight: 16\n")
    command = ["n2n-online", "model.safetensors", "half1.nii.gz", "half2.nii.gz", "-o", "out.nii.gz"]
    return [*command, "--config", "n2n.yaml", *FAST]


@case("`evaluate --json` over an existing file, with a pickle as model: the model is named first",
      "PyTorch pickle checkpoint")
def evaluate_pickle_and_json_exists(root: Path) -> list[str]:
    torch.save({"convs.0.weight": _Payload()}, root / "evil.pt")
    (root / "results.json").write_text("{}")
    return ["evaluate", "data", "--model", "evil=evil.pt", "--json", "results.json"]


@case("`evaluate` on a manifest without test studies", "no study with split 'test'")
def evaluate_no_test_study(root: Path) -> list[str]:
    return ["evaluate", "data", "--device", "cpu", "--no-progress"]


@case("`evaluate --model` without NAME=", "must be NAME=PATH")
def evaluate_model_without_name(root: Path) -> list[str]:
    return ["evaluate", "data", "--model", "model.safetensors"]


@case("`simulate --size 8`", "size 8 is out of range")
def simulate_size(root: Path) -> list[str]:
    return [*SIMULATE, "--size", "8"]


@case("`simulate --levels 30,soon`", "comma-separated seconds")
def simulate_levels_not_numbers(root: Path) -> list[str]:
    return [*SMALL_SIMULATE, "--levels", "30,soon"]


@case("`simulate --levels 900` (longer than the scan)", "at most the 600 s target scan")
def simulate_level_too_long(root: Path) -> list[str]:
    return [*SMALL_SIMULATE, "--levels", "900"]


@case("`simulate --levels 0`", "above 0 s")
def simulate_level_zero(root: Path) -> list[str]:
    return [*SMALL_SIMULATE, "--levels", "0"]


@case("`simulate . --overwrite` (the current folder)", "is the current folder")
def simulate_current_folder(root: Path) -> list[str]:
    return ["simulate", ".", "--size", "16", "--overwrite", "--device", "cpu", "--no-progress"]


@case("`demo -o x.nii.gz` (the demo writes a folder)", "without an extension")
def demo_file_name(root: Path) -> list[str]:
    return ["demo", "--model", "model.safetensors", "--device", "cpu", "--no-progress", "-o", "x.nii.gz"]


@case("`simulate --protocols v3`", "unknown protocol 'v3'")
def simulate_protocol(root: Path) -> list[str]:
    return [*SMALL_SIMULATE, "--protocols", "v3"]


@case("`simulate` into an existing folder, without `--overwrite`", "already exists")
def simulate_exists(root: Path) -> list[str]:
    (root / "sim").mkdir()
    (root / "sim" / "simulation.json").write_text("{}\n")  # an earlier dataset (an empty folder is filled)
    return SMALL_SIMULATE


@case("`simulate --overwrite` onto a folder holding someone's own files", "not the files of a dataset tgdpet simulated")
def simulate_overwrite_foreign_folder(root: Path) -> list[str]:
    (root / "sim").mkdir()
    (root / "sim" / "results.xlsx").write_bytes(b"a spreadsheet")
    return [*SMALL_SIMULATE, "--overwrite"]


# --------------------------------------------------------------------------- configs (--config YAML)


@case("a `--config` with an unknown key", "unknown keys learning_rate")
def config_unknown_key(root: Path) -> list[str]:
    return [*TRAIN, "--config", _yaml(root, "epochs: 2\nlearning_rate: 0.1\n")]


@case("a `--config` value of the wrong type", "'lr' must be a float")
def config_wrong_type(root: Path) -> list[str]:
    return [*TRAIN, "--config", _yaml(root, "lr: fast\n")]


@case("a `--config` that is a list", "must hold a mapping")
def config_not_mapping(root: Path) -> list[str]:
    return [*TRAIN, "--config", _yaml(root, "- 1\n- 2\n")]


@case("a `--config` that is not YAML", "not valid YAML")
def config_not_yaml(root: Path) -> list[str]:
    return [*TRAIN, "--config", _yaml(root, "epochs: [1, 2\n")]


@case("a `--config` with `phi: 2`", "between 0 and 1")
def config_bad_phi(root: Path) -> list[str]:
    return [*FINETUNE, "--config", _yaml(root, "phi: 2\n")]


@case("a `--config` that does not exist", "'gone.yaml' is neither a file nor a shipped config name")
def config_missing(root: Path) -> list[str]:
    return [*TRAIN, "--config", "gone.yaml"]


@case("a `--config` name that tgdpet does not ship", "'large' is neither a file nor a shipped config name \\(.*small")
def config_unknown_name(root: Path) -> list[str]:
    return [*TRAIN, "--config", "large"]


def command_text(args: list[str]) -> str:
    """The command line as a user would type it, without the options that only keep the tests fast."""
    n = len(FAST)
    for i in range(len(args) - n + 1):
        if args[i : i + n] == FAST:
            args = args[:i] + args[i + n :]
            break
    return "tgdpet " + shlex.join(a for a in args if a != "--no-progress")
