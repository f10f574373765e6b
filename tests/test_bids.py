"""PET-BIDS in and out, and dynamic images frame by frame (tgdpet.bids, tgdpet.simulate.dynamic, denoise).

The raw dataset ``tgdpet simulate --bids`` writes is checked with the BIDS validator's own file-name rules
(bids-validator, from the package registry); the derivative dataset, which that validator does not cover, is
checked against the specification's derivative rules, written out here one by one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bids_validator import BIDSValidator
from click.testing import CliRunner
from helpers import trained_like_model, tree_snapshot

from tgdpet.batch import Written
from tgdpet.bids import denoise_dataset, derivative_name
from tgdpet.checkpoint import save_model
from tgdpet.cli import main
from tgdpet.errors import TgdpetError
from tgdpet.domain import Domain
from tgdpet.infer import denoise_array
from tgdpet.io import frame_count
from tgdpet.resample import denoise_on_grid, working_spacings
from tgdpet.simulate import SimulationConfig, StudySpec
from tgdpet.simulate.bids_dataset import write_bids_dataset
from tgdpet.simulate.dynamic import FRAME_DURATIONS_S, STATIC_TIME_S, blood_curve, frame_mean, region_curve

#: PET-BIDS (1.9) sidecar fields that are REQUIRED for every PET image.
REQUIRED_PET_FIELDS = (
    "Manufacturer", "ManufacturersModelName", "Units", "TracerName", "TracerRadionuclide", "InjectedRadioactivity",
    "InjectedRadioactivityUnits", "InjectedMass", "InjectedMassUnits", "SpecificRadioactivity",
    "SpecificRadioactivityUnits", "ModeOfAdministration", "TimeZero", "ScanStart", "InjectionStart",
    "FrameTimesStart", "FrameDuration", "AcquisitionMode", "ImageDecayCorrected", "ImageDecayCorrectionTime",
    "ReconMethodName", "ReconMethodParameterLabels", "ReconMethodParameterUnits", "ReconMethodParameterValues",
    "ReconFilterType", "ReconFilterSize", "AttenuationCorrection",
)  # fmt: skip
#: BIDS entity order (the specification's entity table) of the entities a PET file name may carry.
ENTITY_ORDER = ("sub", "ses", "task", "trc", "rec", "run", "desc")
STATIC, DYNAMIC = "sub-01/pet/sub-01_trc-FDG_rec-v1_pet.nii.gz", "sub-02/pet/sub-02_trc-FDG_rec-v1_pet.nii.gz"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bids") / "ds"
    config = SimulationConfig(studies=(StudySpec("test", "normal", tumour=True),), size=32, slices=24,
                              protocols=("v1",), seed=5, device="cpu", progress=False)  # fmt: skip
    return write_bids_dataset(root, config)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny model that says it was trained on 16 x 16 x 24 mm voxels in Bq/mL, scans of 30-180 s."""
    domain = Domain(voxel_min_mm=(24.0, 16.0, 16.0), voxel_max_mm=(24.0, 16.0, 16.0), units=("BQML",),
                    count_levels_s=(30.0, 180.0))  # fmt: skip
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(path, trained_like_model(), preset="tiny", provenance={"domain": domain.to_json()})


def _files(root: Path) -> list[str]:
    return sorted("/" + p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _entities(name: str) -> list[str]:
    return [part.split("-")[0] for part in name.split(".")[0].split("_")[:-1]]


def _denoise(dataset: Path, model: Path, *extra: str):
    return CliRunner().invoke(main, ["denoise", str(dataset), "--model", str(model), "--device", "cpu",
                                     "--precision", "fp32", "--no-progress", *extra])  # fmt: skip


def test_the_simulated_dataset_passes_the_bids_validator(dataset):
    validator = BIDSValidator()
    raw = [f for f in _files(dataset) if not f.startswith("/derivatives/")]
    assert raw and all(validator.is_bids(f) for f in raw), [f for f in raw if not validator.is_bids(f)]
    for image in (STATIC, DYNAMIC):
        sidecar = json.loads((dataset / image.replace(".nii.gz", ".json")).read_text())
        assert set(REQUIRED_PET_FIELDS) <= set(sidecar), set(REQUIRED_PET_FIELDS) - set(sidecar)
        frames = nib.load(dataset / image).shape[3] if nib.load(dataset / image).ndim == 4 else 1
        assert len(sidecar["FrameDuration"]) == len(sidecar["FrameTimesStart"]) == frames
    assert nib.load(dataset / DYNAMIC).shape[3] == len(FRAME_DURATIONS_S) == 22
    description = json.loads((dataset / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and description["BIDSVersion"].startswith("1.")


def test_the_dynamic_truth_follows_the_curves(dataset):
    """Each frame's true liver activity is the static liver activity times the curve's mean over the frame."""
    truth = np.asarray(nib.load(dataset / "derivatives/phantom" / DYNAMIC.replace("_pet", "_desc-truth_pet")).dataobj)
    labels = np.asarray(nib.load(dataset / "derivatives/phantom/sub-02/pet/sub-02_desc-labels_dseg.nii.gz").dataobj)
    liver = labels == 2
    starts = np.concatenate([[0.0], np.cumsum(FRAME_DURATIONS_S)[:-1]])
    static = truth[..., -1][liver].mean() / frame_mean("liver", starts[-1], FRAME_DURATIONS_S[-1])
    for k, (start, seconds) in enumerate(zip(starts, FRAME_DURATIONS_S)):
        assert truth[..., k][liver].mean() == pytest.approx(static * frame_mean("liver", start, seconds), rel=1e-4)
    # The curves: 1 at the static time, no blood before the bolus, a peak 8-10x the late level, lesions rising.
    for region in ("liver", "aorta", "lesion", "bladder", "body"):
        assert region_curve(region, np.array(STATIC_TIME_S)) == pytest.approx(1.0)
    assert blood_curve(np.array(20.0)) == 0.0 and 8 < blood_curve(np.linspace(30, 90, 61)).max() < 10
    assert np.all(np.diff(region_curve("lesion", np.linspace(60, 3600, 50))) > 0)


def test_a_dataset_in_a_derivative_dataset_out(dataset, model, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    (ds / "sub-01" / "anat").mkdir()
    shutil.copy(ds / STATIC, ds / "sub-01" / "anat" / "sub-01_T1w.nii.gz")  # not PET: skipped with a reason
    before = tree_snapshot(ds)
    result = _denoise(ds, model)
    assert result.exit_code == 3, result.output  # done, but an image (the T1w) was skipped
    assert "skipped: sub-01/anat/sub-01_T1w.nii.gz (not PET (datatype anat))" in result.output
    assert {k: v for k, v in tree_snapshot(ds).items() if k in before} == before  # the raw data untouched
    out = ds / "derivatives" / "tgdpet"

    # Derivative rules: a dataset_description.json naming the pipeline, the raw layout mirrored, desc- entity.
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"].startswith("1.")
    assert description["GeneratedBy"][0]["Name"] == "tgdpet" and description["GeneratedBy"][0]["Version"]
    validator = BIDSValidator()
    for image in (STATIC, DYNAMIC):
        folder, name = image.rsplit("/", 1)
        derived = sorted(p.name for p in (out / folder).iterdir() if p.name.endswith(".nii.gz"))
        assert derived == [name.replace("_pet.nii.gz", "_desc-denoised_pet.nii.gz")]
        entities = _entities(derived[0])
        assert entities == sorted(entities, key=ENTITY_ORDER.index) and entities[-1] == "desc"
        assert validator.is_bids("/" + folder + "/" + derived[0].replace("_desc-denoised", ""))  # raw-valid rest
        sidecar = json.loads((out / folder / derived[0].replace(".nii.gz", ".json")).read_text())
        source = json.loads((ds / image.replace(".nii.gz", ".json")).read_text())
        assert {k: sidecar[k] for k in source} == source and sidecar["Sources"] == [f"bids:raw:{image}"]
        assert sidecar["TgdpetModel"] == "tiny" and len(sidecar["TgdpetModelSHA256"]) == 64
    report = json.loads((out / "tgdpet-report.json").read_text())
    assert (report["denoised"], report["skipped"]) == (2, 1)
    assert (out / ".bidsignore").read_text().split() == ["tgdpet-report.json"]

    again = _denoise(ds, model)
    assert again.exit_code == 2 and "--overwrite" in again.output  # an earlier derivative is not replaced


def test_a_dynamic_image_is_denoised_frame_by_frame(dataset, model, tmp_path):
    """Every output frame is the network's result on that frame alone (computed here from the frame's array on
    each candidate grid), the report, sidecar and printed line name the grid whose result it is,
    and frames shorter than the model's shortest training scan are warned about, one sentence each."""
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    result = _denoise(ds, model)
    assert result.exit_code == 0, result.output
    short = [line for line in result.output.splitlines() if "shorter than the shortest scan" in line]
    assert len(short) == sum(d < 30 for d in FRAME_DURATIONS_S) == 6
    assert "frame 5 lasts 10 s" in result.output and "frame 6 lasts" not in result.output
    out = nib.load(ds / "derivatives/tgdpet" / DYNAMIC.replace("_pet", "_desc-denoised_pet"))
    source = nib.load(ds / DYNAMIC)
    assert out.shape == source.shape and np.allclose(out.affine, source.affine)
    net = trained_like_model()
    data, result_data = np.asarray(source.dataobj), np.asarray(out.dataobj)
    voxel_zyx = tuple(float(v) for v in source.header.get_zooms()[:3][::-1])
    assert voxel_zyx == (24.0, 16.0, 16.0)  # the model's own voxels: its grid and one 1.25x finer are tried
    report = json.loads((ds / "derivatives/tgdpet/tgdpet-report.json").read_text())
    (entry,) = [e for e in report["inputs"] if e["input"].endswith(DYNAMIC)]
    sidecar_name = DYNAMIC.replace("_pet.nii.gz", "_desc-denoised_pet.json")
    sidecar = json.loads((ds / "derivatives/tgdpet" / sidecar_name).read_text())
    assert entry["voxel_mm"] == [16.0, 16.0, 24.0] and len(entry["working_grids_mm"]) == 22
    assert sidecar["TgdpetWorkingGrids"] == entry["working_grids_mm"]
    grids = []
    for k in range(len(FRAME_DURATIONS_S)):
        # The simulator stores (x, y, z) in the canonical L, P, S frame: (z, y, x) is a transpose.
        frame = np.ascontiguousarray(data[..., k].transpose(2, 1, 0))
        on_grid = {
            grid[::-1]: denoise_on_grid(
                frame, voxel_zyx, grid, lambda a: denoise_array(net, a, device="cpu", precision="fp32")
            ).transpose(2, 1, 0)
            for grid in working_spacings(voxel_zyx, voxel_zyx)
        }
        assert set(on_grid) == {(16.0, 16.0, 24.0), (12.8, 12.8, 19.2)}
        matches = [
            grid for grid, expected in on_grid.items()
            if np.allclose(result_data[..., k], expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())
        ]  # fmt: skip
        assert len(matches) == 1 and entry["working_grids_mm"][k] == pytest.approx(list(matches[0])), (k, matches)
        grids.append(matches[0])
    # The line printed for it says the same: one grid, or each with its number of frames.
    counts = {g: grids.count(g) for g in dict.fromkeys(grids)}
    named = [f"{' x '.join(f'{v:g}' for v in g)} mm ({n} frame" for g, n in counts.items()]
    (line,) = [line for line in result.output.splitlines() if line.startswith(f"denoised: {DYNAMIC}")]
    if len(counts) == 1:
        assert line.endswith(f"(working grid {named[0].split(' (')[0]}; the image's voxels are 16 x 16 x 24 mm)")
    else:
        assert "working grids " in line and all(n in line for n in named), line


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update(FrameDuration=s["FrameDuration"][:-1]), "holds 22 frame(s) but its sidecar's FrameDuration"),
        (lambda s: s.update(Units="kBq/mL"), "Units 'kBq/mL', but tgdpet reads only Bq/mL and SUV"),
        (lambda s: s.pop("FrameTimesStart"), "lacks FrameTimesStart"),
        (lambda s: s["FrameDuration"].__setitem__(3, float("nan")), "FrameDuration holds a non-finite value"),
        (lambda s: s.update(FrameTimesStart=[str(v) for v in s["FrameTimesStart"]]),
         "FrameTimesStart must be numbers (seconds, one per frame), not '0"),
    ],
)  # fmt: skip
def test_a_sidecar_that_contradicts_its_image_is_refused_and_the_rest_go_on(dataset, model, tmp_path, edit, message):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    sidecar_path = ds / DYNAMIC.replace(".nii.gz", ".json")
    sidecar = json.loads(sidecar_path.read_text())
    edit(sidecar)
    sidecar_path.write_text(json.dumps(sidecar))
    result = _denoise(ds, model)
    assert result.exit_code == 3, result.output
    assert f"skipped: {DYNAMIC} (" in result.output and message in result.output
    report = json.loads((ds / "derivatives/tgdpet/tgdpet-report.json").read_text())
    assert (report["denoised"], report["skipped"]) == (1, 1)
    assert not (ds / "derivatives/tgdpet" / DYNAMIC.replace("_pet", "_desc-denoised_pet")).exists()


def _copy(i: Path, o: Path, units: str, durations) -> Written:
    """A stand-in for denoising (the network is tested above): the image copied, one 1 mm grid per frame."""
    shutil.copy(i, o)
    return Written(o, (1.0, 1.0, 1.0), ((1.0, 1.0, 1.0),) * len(durations))


def _frames(path: Path) -> tuple[int, None]:
    return frame_count(path), None


def _run(ds: Path, out: Path | None = None, denoise=_copy, **options) -> dict:
    return denoise_dataset(ds, out or ds / "derivatives/tgdpet", denoise, _frames, echo=lambda line: None, **options)


def _raw(dataset: Path, tmp_path: Path, *leave_out: str) -> Path:
    """The dataset copied without the simulator's truth (derivatives/ stays, empty), and without ``leave_out``."""
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds, ignore=shutil.ignore_patterns("phantom", *leave_out))
    return ds


def test_a_raw_dataset_without_derivatives_gets_its_folder(dataset, model, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds, ignore=shutil.ignore_patterns("derivatives", "sub-02"))
    result = _denoise(ds, model)
    assert result.exit_code == 0, result.output
    assert os.listdir(ds / "derivatives") == ["tgdpet"]
    assert (ds / "derivatives/tgdpet" / STATIC.replace("_pet", "_desc-denoised_pet")).is_file()


def test_a_folder_laid_out_as_pet_bids_without_its_description_is_refused(dataset, model, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds, ignore=shutil.ignore_patterns("derivatives", "sub-02", "dataset_description.json"))
    before = tree_snapshot(tmp_path)
    result = _denoise(ds, model)
    assert result.exit_code == 2, result.output
    assert "looks like a PET-BIDS dataset but has no dataset_description.json; add one" in result.output
    assert tree_snapshot(tmp_path) == before


def test_an_interrupted_run_leaves_nothing_under_the_final_name(dataset, tmp_path):
    """Ctrl-C during the second image: no derivative dataset under any name (and no derivatives/ folder made for
    it); an earlier one given --overwrite is kept whole; the next run then succeeds."""
    ds = _raw(dataset, tmp_path)

    def interrupted(i, o, units, durations):
        if "sub-02" in i.name:
            raise KeyboardInterrupt
        return _copy(i, o, units, durations)

    with pytest.raises(KeyboardInterrupt):
        _run(ds, denoise=interrupted)
    assert os.listdir(ds / "derivatives") == []
    _run(ds)
    before = tree_snapshot(ds / "derivatives")
    with pytest.raises(KeyboardInterrupt):
        _run(ds, denoise=interrupted, overwrite=True)
    assert tree_snapshot(ds / "derivatives") == before and os.listdir(ds / "derivatives") == ["tgdpet"]
    shutil.rmtree(ds / "derivatives")  # a raw dataset that had none is left without one
    with pytest.raises(KeyboardInterrupt):
        _run(ds, denoise=interrupted)
    assert not (ds / "derivatives").exists()


def test_overwrite_replaces_the_derivative_dataset_whole_and_only_its_own(dataset, tmp_path):
    ds = _raw(dataset, tmp_path)
    out = ds / "derivatives/tgdpet"
    _run(ds)
    (out / "mynotes.txt").write_text("mine")
    before = tree_snapshot(out)
    with pytest.raises(TgdpetError, match=r"holds 1 file\(s\) or folder\(s\) tgdpet did not write \(mynotes.txt\)"):
        _run(ds, overwrite=True)
    assert tree_snapshot(out) == before
    (out / "mynotes.txt").unlink()
    shutil.copytree(out / "sub-01", out / "sub-09")  # a subject since removed from the source
    report = _run(ds, overwrite=True)
    assert not (out / "sub-09").exists() and sorted(os.listdir(out)) == [
        ".bidsignore", "dataset_description.json", "sub-01", "sub-02", "tgdpet-report.json"]
    assert [e["input"] for e in report["inputs"]] == [STATIC, DYNAMIC]


def test_a_source_desc_is_kept_so_no_two_sources_share_a_result(dataset, tmp_path):
    assert derivative_name(Path("sub-01_trc-FDG_desc-nac_pet.nii.gz")) == "sub-01_trc-FDG_desc-nacdenoised_pet.nii.gz"
    assert derivative_name(Path("sub-01_trc-FDG_pet.nii")) == "sub-01_trc-FDG_desc-denoised_pet.nii"
    ds = _raw(dataset, tmp_path, "sub-02")
    for ext in (".nii.gz", ".json"):
        shutil.copy(ds / STATIC.replace(".nii.gz", ext), ds / STATIC.replace("_pet.nii.gz", "_desc-nac_pet" + ext))
    report = _run(ds)
    assert [Path(e["output"]).name for e in report["inputs"]] == [
        "sub-01_trc-FDG_rec-v1_desc-nacdenoised_pet.nii.gz", "sub-01_trc-FDG_rec-v1_desc-denoised_pet.nii.gz"]
    # One image as .nii and .nii.gz: both results (and their sidecar) would share a name, refused before any work.
    nib.save(nib.load(ds / STATIC), ds / STATIC.replace(".nii.gz", ".nii"))
    with pytest.raises(TgdpetError, match="would both be written as"):
        _run(ds, ds / "derivatives/again")
    assert not (ds / "derivatives/again").exists()


def test_sidecars_are_inherited_from_the_folders_above(dataset, tmp_path):
    """BIDS' inheritance principle: a subject-level sidecar, and a dataset-level one whose entities the image has,
    the deeper one's fields winning; the result's sidecar keeps them all."""
    ds = _raw(dataset, tmp_path)
    static_json, dynamic_json = (ds / p.replace(".nii.gz", ".json") for p in (STATIC, DYNAMIC))
    shutil.move(static_json, ds / "sub-01" / static_json.name)
    dynamic = json.loads(dynamic_json.read_text())
    (ds / "trc-FDG_rec-v1_pet.json").write_text(json.dumps({"TracerName": "not this", "Units": dynamic["Units"],
                                                            "BodyPart": "whole body"}))  # fmt: skip
    (ds / "trc-FDG_rec-v2_pet.json").write_text(json.dumps({"Units": "kBq/mL"}))  # another rec: not applicable
    dynamic_json.write_text(json.dumps({k: v for k, v in dynamic.items() if k != "Units"}))
    report = _run(ds)
    assert (report["denoised"], report["skipped"]) == (2, 0), report
    derived = ds / "derivatives/tgdpet" / DYNAMIC.replace("_pet.nii.gz", "_desc-denoised_pet.json")
    sidecar = json.loads(derived.read_text())
    assert {k: sidecar[k] for k in dynamic} == dynamic and sidecar["BodyPart"] == "whole body"


def test_symlinked_subject_and_pet_folders_are_followed(dataset, tmp_path):
    ds, store = _raw(dataset, tmp_path), tmp_path / "store"
    store.mkdir()
    shutil.move(ds / "sub-02", store / "sub-02")
    (ds / "sub-02").symlink_to(store / "sub-02")
    shutil.move(ds / "sub-01/pet", store / "pet")
    (ds / "sub-01/pet").symlink_to(store / "pet")
    (ds / "sub-01/loop").symlink_to(ds)  # a loop ends
    report = _run(ds)
    assert [(e["input"], e["status"]) for e in report["inputs"]] == [(STATIC, "denoised"), (DYNAMIC, "denoised")]


def test_annexed_files_are_recorded_by_name_and_missing_content_is_named(dataset, tmp_path):
    """git-annex/DataLad: an image is a symbolic link into .git/annex; one whose content was not fetched dangles."""
    ds = _raw(dataset, tmp_path)
    objects = ds / ".git/annex/objects"
    objects.mkdir(parents=True)
    shutil.move(ds / STATIC, objects / "SHA256E-s1--static.nii.gz")
    (ds / STATIC).symlink_to(os.path.relpath(objects / "SHA256E-s1--static.nii.gz", (ds / STATIC).parent))
    (ds / DYNAMIC).unlink()
    (ds / DYNAMIC).symlink_to(os.path.relpath(objects / "SHA256E-s2--not-fetched.nii.gz", (ds / DYNAMIC).parent))
    report = _run(ds)
    static, dynamic = report["inputs"]
    assert (static["input"], static["status"]) == (STATIC, "denoised")
    assert (dynamic["input"], dynamic["status"]) == (DYNAMIC, "skipped")
    assert "is a symbolic link whose content is not present; fetch it (datalad get" in dynamic["reason"]


def test_the_derivative_links_the_raw_dataset_its_uris_name(dataset, tmp_path):
    ds = _raw(dataset, tmp_path, "sub-02")
    for out, link in ((ds / "derivatives/tgdpet", "../.."), (tmp_path / "elsewhere", ds.resolve().as_uri())):
        _run(ds, out)
        description = json.loads((out / "dataset_description.json").read_text())
        assert description["DatasetLinks"] == {"raw": link}
        assert description["SourceDatasets"] == [{"URL": "bids:raw:"}]
        sidecar = json.loads((out / STATIC.replace("_pet.nii.gz", "_desc-denoised_pet.json")).read_text())
        assert sidecar["Sources"] == [f"bids:raw:{STATIC}"] and (ds / STATIC).is_file()
