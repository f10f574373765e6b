"""Files from elsewhere: model files are never unpickled, and lying headers cost no memory.

Model files are safetensors; anything else (a ``torch.save`` pickle, even one
carrying a payload), a safetensors file of another project, a truncated file
or a header that lies is refused with one :class:`TgdpetError`. Image headers
that claim huge volumes are refused before anything is allocated: the proof
runs in a subprocess whose address space is capped (``RLIMIT_AS``) a little
above what it already uses, where allocating the claimed volume would fail.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pydicom
import pytest
import torch
from click.testing import CliRunner
from helpers import lying_nifti, make_volume, write_test_nifti, write_test_series
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless
from safetensors.torch import save_file
from test_data import make_dataset

from tgdpet.checkpoint import load_model, save_model
from tgdpet.cli import main
from tgdpet.errors import TgdpetError
from tgdpet.models import build_model


class Payload:
    """Unpickling this creates ``marker``: the proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def pickled_models(folder: Path, marker: Path) -> dict[str, Path]:
    """Model-looking pickles that run code when unpickled: torch's zip and legacy formats, and plain pickle."""
    folder.mkdir(exist_ok=True)
    state = {"convs.0.weight": torch.zeros(8, 3, 3, 3), "hook": Payload(marker)}
    files = {name: folder / f"{name}.safetensors" for name in ("torch-zip", "torch-legacy", "pickle-0", "pickle-5")}
    torch.save(state, files["torch-zip"])
    torch.save(state, files["torch-legacy"], _use_new_zipfile_serialization=False)
    files["pickle-0"].write_bytes(pickle.dumps(state, protocol=0))
    files["pickle-5"].write_bytes(pickle.dumps(state, protocol=5))
    return files


def one_line_error(fn) -> str:
    """``fn()`` raises a TgdpetError of one line; its message."""
    with pytest.raises(TgdpetError) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.fixture
def model_file(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_model(tmp_path / "model.safetensors", build_model("tiny"), preset="tiny")


def rewrite_header(src: Path, dest: Path, edit) -> Path:
    """Copy a safetensors file with its JSON header changed by ``edit(header)`` (tensor bytes kept)."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dest.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    return dest


def edit_tgdpet_meta(edit):
    def apply(header: dict) -> None:
        meta = json.loads(header["__metadata__"]["tgdpet"])
        edit(meta)
        header["__metadata__"]["tgdpet"] = json.dumps(meta)

    return apply


# --------------------------------------------------------------------------- pickles


def test_the_payload_is_live(tmp_path):
    """Control: these files do run code when unpickled, so the tests below would see it happen."""
    marker = tmp_path / "UNPICKLED"
    for path in pickled_models(tmp_path / "m", marker).values():
        if path.name.startswith("torch"):
            # (copied to a .pt name: torch.load treats *.safetensors names as safetensors)
            torch.load(shutil.copy(path, tmp_path / "model.pt"), weights_only=False)
        else:
            pickle.loads(path.read_bytes())
        assert marker.exists(), path.name
        marker.unlink()


def test_pickled_models_are_refused_unopened(tmp_path):
    marker = tmp_path / "UNPICKLED"
    for name, path in pickled_models(tmp_path / "m", marker).items():
        message = one_line_error(lambda: load_model(path))
        assert ("PyTorch pickle checkpoint" if name != "pickle-0" else "not a complete safetensors") in message, name
    assert not marker.exists()


def test_every_command_that_takes_a_model_refuses_a_pickle(tmp_path):
    marker = tmp_path / "UNPICKLED"
    evil = pickled_models(tmp_path / "m", marker)["torch-zip"]
    data = make_dataset(tmp_path / "data", n_train=1, n_val=0, shape=(4, 16, 16), halves=True)
    scan = write_test_nifti(tmp_path / "scan.nii.gz")
    half = str(data.parent / "s000" / "half1.nii.gz")
    commands = [
        ["denoise", "--model", str(evil), "--device", "cpu", str(scan)],
        ["score-kse", str(evil)],
        ["tgd-finetune", str(evil), str(data), "-o", str(tmp_path / "run"), "--device", "cpu"],
        ["n2n-online", str(evil), half, half, "-o", str(tmp_path / "out.nii.gz"), "--device", "cpu"],
        ["evaluate", str(data), "--model", f"evil={evil}", "--study", "s000", "--device", "cpu", "--no-progress"],
    ]
    for args in commands:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and result.stderr.startswith("Error: "), (args[0], result.output)
        assert "pickle checkpoint" in result.stderr, (args[0], result.stderr)
    assert not marker.exists()
    assert not (tmp_path / "run").exists() and not (tmp_path / "out.nii.gz").exists()


def test_a_pickled_training_state_is_not_unpickled_on_resume(tmp_path):
    marker = tmp_path / "UNPICKLED"
    data = make_dataset(tmp_path / "data", n_train=1, n_val=0, shape=(4, 16, 16))
    args = ["train", str(data), "-o", str(tmp_path / "run"), "--preset", "tiny", "--device", "cpu", "--no-amp",
            "--patch-size", "16", "--batch-size", "4", "--patches-per-epoch", "4", "--epochs", "1", "--no-progress"]
    assert CliRunner().invoke(main, args).exit_code == 0
    # someone swaps the state for a pickle that runs code (torch.save writes one readily)
    torch.save({"format": "tgdpet-training-state", "format_version": 1, "state": Payload(marker)},
               tmp_path / "run" / "training_state.pt")  # fmt: skip
    result = CliRunner().invoke(main, [*args, "--epochs", "2", "--resume"])
    assert result.exit_code == 2 and "not a readable tgdpet training state" in result.stderr, result.output
    assert not marker.exists()


# --------------------------------------------------------------------------- foreign, damaged and lying model files


def test_a_safetensors_file_of_another_project(tmp_path):
    save_file({"encoder.weight": torch.zeros(4, 4)}, tmp_path / "bert.safetensors")
    assert "not a tgdpet model" in one_line_error(lambda: load_model(tmp_path / "bert.safetensors"))
    save_file({"w": torch.zeros(2)}, tmp_path / "meta.safetensors", metadata={"tgdpet": '{"format": "other"}'})
    assert "not a tgdpet model" in one_line_error(lambda: load_model(tmp_path / "meta.safetensors"))


def test_a_model_file_from_a_future_format(tmp_path, model_file):
    edit = edit_tgdpet_meta(lambda m: m.update(format_version=9))
    future = rewrite_header(model_file, tmp_path / "f.safetensors", edit)
    assert "format version 9" in one_line_error(lambda: load_model(future))


@pytest.mark.parametrize("keep", ["nothing", "4 bytes", "header length", "half the header", "the header",
                                  "half the tensors", "all but one byte"])  # fmt: skip
def test_a_truncated_model_file(tmp_path, model_file, keep):
    raw = model_file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    cut = {"nothing": 0, "4 bytes": 4, "header length": 8, "half the header": 8 + n // 2, "the header": 8 + n,
           "half the tensors": (8 + n + len(raw)) // 2, "all but one byte": len(raw) - 1}[keep]  # fmt: skip
    (tmp_path / "cut.safetensors").write_bytes(raw[:cut])
    message = one_line_error(lambda: load_model(tmp_path / "cut.safetensors"))
    assert "truncated" in message or "only" in message or "not a safetensors" in message, message


def test_headers_that_lie(tmp_path, model_file):
    def shape_without_bytes(h):  # a bigger shape than the bytes the header gives the tensor
        h["convs.0.weight"]["shape"] = [64, 3, 3, 3]

    def other_dtype(h):  # same byte count, not a float: the architecture needs float weights
        h["convs.0.weight"]["dtype"] = "I32"

    def huge_length(h):  # a tensor that claims more bytes than the whole file
        h["convs.0.weight"]["shape"] = [2**40, 3, 3, 3]
        h["convs.0.weight"]["data_offsets"] = [0, 2**40 * 27 * 4]

    cases = {
        "shape": (shape_without_bytes, "damaged safetensors header"),
        "dtype": (other_dtype, "does not match its recorded architecture"),
        "size": (huge_length, "damaged|truncated"),
        "architecture": (edit_tgdpet_meta(lambda m: m["architecture"].update(widths=[16] * 7 + [3])),
                         "does not match its recorded architecture"),
        "masks": (edit_tgdpet_meta(lambda m: m.update(masks={"1": [99]}, masks_history=[{"1": [99]}])),
                  "TGD masks that do not fit"),
    }
    for name, (edit, match) in cases.items():
        path = rewrite_header(model_file, tmp_path / f"{name}.safetensors", edit)
        message = one_line_error(lambda: load_model(path))
        assert re.search(match, message), (name, message)


def _overlapping(h: dict) -> None:
    """The first tensor of 8 bytes or more moved 4 bytes on, into the next one (the file's size kept)."""
    names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
    first = next(k for k in names if h[k]["data_offsets"][1] - h[k]["data_offsets"][0] >= 8)
    begin, end = h[first]["data_offsets"]
    h[first]["data_offsets"] = [begin + 4, end + 4]  # overlaps the next tensor, leaves a 4-byte gap before


@pytest.mark.parametrize("name, edit", [
    ("masks_history a number", edit_tgdpet_meta(lambda m: m.update(masks_history=5))),
    ("normalization a string", edit_tgdpet_meta(lambda m: m.update(normalization="abc"))),
    ("provenance a list", edit_tgdpet_meta(lambda m: m.update(provenance=[1, 2]))),
    ("preset a number", edit_tgdpet_meta(lambda m: m.update(preset=5))),
    ("metadata a list", lambda h: h.update({"__metadata__": [h["__metadata__"]["tgdpet"]]})),
    ("metadata value a number", lambda h: h["__metadata__"].update(other=5)),
    ("overlapping tensors", _overlapping),
])  # fmt: skip
def test_crafted_model_files_are_one_error_line_of_every_command(tmp_path, model_file, name, edit):
    """Each crafted file crashed score-kse with a traceback (TypeError, ValueError, AttributeError,
    SafetensorError) before; now it is an Error line and exit status 2."""
    path = rewrite_header(model_file, tmp_path / "crafted.safetensors", edit)
    message = one_line_error(lambda: load_model(path))
    assert "damaged" in message and str(path) in message, message
    result = CliRunner().invoke(main, ["score-kse", str(path)])
    assert result.exit_code == 2 and result.output.startswith("Error: ") and "Traceback" not in result.output


def test_a_header_claiming_a_huge_size(tmp_path):
    path = tmp_path / "huge.safetensors"
    for claimed in (2**63 - 1, 2**40, 10**9):
        path.write_bytes(struct.pack("<Q", claimed) + b'{"a": 1}' + b"\0" * 100)
        assert "not a complete safetensors model file" in one_line_error(lambda: load_model(path))


def test_a_model_with_nan_weights(tmp_path):
    model = build_model("tiny")
    with torch.no_grad():
        model.convs[2].weight[0, 0, 0, 0] = float("nan")
    save_model(tmp_path / "nan.safetensors", model, preset="tiny")
    assert "NaN or infinite values" in one_line_error(lambda: load_model(tmp_path / "nan.safetensors"))


# --------------------------------------------------------------------------- no allocation for lying headers

_CAPPED = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from tgdpet.checkpoint import load_model
    from tgdpet.errors import TgdpetError
    from tgdpet.io import read_volume

    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    limit = vm_bytes() + 768 * 2**20  # what the process uses now, plus 768 MiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    results = {}
    try:  # control: the cap stops an allocation of the size these headers claim
        np.ones(800 * 1024 * 1024, np.float32)
        results["control"] = "allocated"
    except MemoryError:
        results["control"] = "MemoryError"
    for name, path in json.loads(sys.argv[1]).items():
        try:
            (load_model if path.endswith(".safetensors") else read_volume)(path)
            results[name] = "read"
        except TgdpetError as e:
            results[name] = "TgdpetError: " + str(e)
        except BaseException as e:
            results[name] = f"{type(e).__name__}: {e}"
    print(json.dumps(results))
    """
)


def lying_series(folder: Path, rows: int, columns: int, rle: bool) -> Path:
    """A one-slice DICOM series whose header claims ``rows`` x ``columns`` pixels (uncompressed or RLE)."""
    files = write_test_series(folder, make_volume(shape=(1, 16, 16)))
    segment = b"\x81\x00" * 16  # RLE: 16 runs of 128 zero bytes
    frame = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13)) + segment * 2
    for f in files:
        ds = pydicom.dcmread(f)
        ds.Rows, ds.Columns = rows, columns
        if rle:
            ds.file_meta.TransferSyntaxUID = RLELossless
            ds.PixelData = encapsulate([frame])
            ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)
    return folder


def test_huge_headers_are_refused_before_anything_is_allocated(tmp_path, model_file):
    architecture = edit_tgdpet_meta(lambda m: m["architecture"].update(widths=[8192] * 7 + [3]))
    files = {
        "nifti beyond MAX_VOXELS": lying_nifti(tmp_path / "huge.nii", (4096, 4096, 4096)),
        "nifti 3.4 GB in 4 kB": lying_nifti(tmp_path / "big.nii", (1024, 1024, 800)),
        "nifti.gz 3.4 GB in 4 kB": lying_nifti(tmp_path / "bomb.nii.gz", (1024, 1024, 800)),
        "dicom 40000^2 slice": lying_series(tmp_path / "raw", 40000, 40000, rle=False),
        "dicom RLE 30000^2 slice": lying_series(tmp_path / "rle", 30000, 30000, rle=True),
        "model claiming 8192-wide layers": rewrite_header(model_file, tmp_path / "wide.safetensors", architecture),
    }
    out = subprocess.run(
        [sys.executable, "-c", _CAPPED, json.dumps({k: str(v) for k, v in files.items()})],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.splitlines()[-1])
    assert results.pop("control") == "MemoryError"
    refused = {name: r for name, r in results.items() if r.startswith("TgdpetError: ")}
    assert refused == results, {k: v for k, v in results.items() if k not in refused}
