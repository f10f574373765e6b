"""Manifests, studies in memory and 2.5D patch sampling (tgdpet.data).

``make_dataset`` writes the tiny NIfTI datasets the training tests use too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tgdpet.data import PatchDataset, Study, detail_map, load_manifest, load_studies, merge_manifests
from tgdpet.inputs import intensity_scale
from tgdpet.errors import TgdpetError
from tgdpet.io import Volume, read_volume, write_volume

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def phantom(shape=(6, 32, 32), seed=0) -> np.ndarray:
    """A smooth body (ellipse) with a hot blob, in air; varies slowly along z."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]].astype(np.float32)
    cy, cx = shape[1] / 2, shape[2] / 2
    body = ((y - cy) / (0.38 * shape[1])) ** 2 + ((x - cx) / (0.32 * shape[2])) ** 2 < 1
    by, bx = cy + rng.uniform(-4, 4), cx + rng.uniform(-4, 4)
    blob = 4.0 * np.exp(-((y - by) ** 2 + (x - bx) ** 2) / 10.0 - (z - shape[0] / 2) ** 2 / 8.0)
    return (body * (1.0 + 0.05 * z) + blob * body).astype(np.float32) * 1000.0  # Bq/mL-like values


def noisy(image: np.ndarray, counts_per_unit: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson noise at a count level (higher = less noise), back in the image's units."""
    scale = counts_per_unit / 1000.0
    return (rng.poisson(image * scale) / scale).astype(np.float32)


def make_dataset(root: Path, n_train: int = 2, n_val: int = 1, shape=(6, 32, 32), halves: bool = False) -> Path:
    """Write a tgdpet manifest with NIfTI studies (two count levels each) under ``root``; return the manifest path."""
    rng = np.random.default_rng(123)
    studies = []
    for i in range(n_train + n_val):
        sid = f"s{i:03d}"
        (root / sid).mkdir(parents=True)
        clean = phantom(shape, seed=i)
        write_volume(Volume(clean, AFFINE), root / sid / "target.nii.gz")
        inputs = []
        for level in (2.0, 5.0):
            name = f"{sid}/noisy_{int(level)}.nii.gz"
            write_volume(Volume(noisy(clean, level, rng), AFFINE), root / name)
            inputs.append(name)
        split = "train" if i < n_train else "val"
        entry = {"id": sid, "split": split, "target": f"{sid}/target.nii.gz", "inputs": inputs}
        if halves:
            entry["halves"] = []
            for h in (1, 2):
                name = f"{sid}/half{h}.nii.gz"
                write_volume(Volume(noisy(clean, 2.0, rng), AFFINE), root / name)
                entry["halves"].append(name)
        studies.append(entry)
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"format": "tgdpet-manifest", "version": 1, "studies": studies}))
    return manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


# --------------------------------------------------------------------------- manifests


def test_manifest_from_folder_and_splits(dataset):
    m = load_manifest(dataset.parent)
    assert m.path == dataset
    assert [s.id for s in m.split("train")] == ["s000", "s001"]
    assert [s.id for s in m.split("val")] == ["s002"]
    assert m.split("test") == []
    assert m.studies[0].inputs[0] == dataset.parent / "s000" / "noisy_2.nii.gz"


def _write(tmp_path: Path, content) -> Path:
    p = tmp_path / "manifest.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


@pytest.mark.parametrize(
    "studies, message",
    [
        ([{"id": "a", "inputs": ["s000/noisy_2.nii.gz"]}], "lacks 'target'"),
        ([{"id": "a", "target": "s000/target.nii.gz", "inputs": ["nope.nii.gz"]}], "nope.nii.gz does not exist"),
        (
            [{"id": "a", "split": "training", "target": "s000/target.nii.gz", "inputs": ["s000/noisy_2.nii.gz"]}],
            "unknown split 'training'",
        ),
        ([{"id": "a", "target": "s000/target.nii.gz", "inputs": []}], "has no inputs"),
        ([{"id": "a", "target": "s000/target.nii.gz", "inputs": "s000/noisy_2.nii.gz"}], "must be a list"),
        ([{"id": "a", "target": "s000/target.nii.gz", "inputs": ["s000/noisy_2.nii.gz"]}] * 2, "twice"),
        ([], "lists no studies"),
    ],
)
def test_manifest_errors(dataset, studies, message):
    bad = dataset.parent / "bad.json"  # beside the good manifest, so the relative paths resolve
    bad.write_text(json.dumps({"format": "tgdpet-manifest", "version": 1, "studies": studies}))
    with pytest.raises(TgdpetError, match=message):
        load_manifest(bad)


def test_manifest_bad_json_and_missing(tmp_path):
    with pytest.raises(TgdpetError, match="not valid JSON"):
        load_manifest(_write(tmp_path, "{not json"))
    with pytest.raises(TgdpetError, match="no 'studies' list"):
        load_manifest(_write(tmp_path, {"format": "tgdpet-manifest"}))
    with pytest.raises(TgdpetError, match="not 'tgdpet-manifest'"):
        load_manifest(_write(tmp_path, {"format": "other", "studies": []}))
    with pytest.raises(TgdpetError, match="no dataset manifest"):
        load_manifest(tmp_path / "elsewhere")


def test_shape_mismatch_is_refused(tmp_path):
    write_volume(Volume(phantom((6, 32, 32)), AFFINE), tmp_path / "t.nii.gz")
    write_volume(Volume(phantom((6, 32, 30)), AFFINE), tmp_path / "x.nii.gz")
    m = load_manifest(_write(tmp_path, {"studies": [{"id": "a", "target": "t.nii.gz", "inputs": ["x.nii.gz"]}]}))
    with pytest.raises(TgdpetError, match="input #1 has shape"):
        load_studies(m, "train")


def shifted(mm: float) -> np.ndarray:
    """:data:`AFFINE` with its origin moved ``mm`` along x."""
    affine = AFFINE.copy()
    affine[0, 3] += mm
    return affine


@pytest.mark.parametrize("affine, units, message", [
    (np.diag([4.0, 4.0, 6.0, 1.0]), "BQML", "not its grid.*up to 62 mm"),  # voxels twice as large
    (shifted(40.0), "BQML", "up to 40 mm"),
    (AFFINE, "SUV", "is in SUV but its target is in BQML"),
])  # fmt: skip
def test_an_input_of_the_target_s_shape_on_another_grid_or_in_other_units_is_refused(tmp_path, affine, units,
                                                                                       message):
    """Only the shape was compared: an input 40 mm away, with twice the voxel size or in SUV against a Bq/mL
    target was trained on and scored silently. The largest offset of a 32x32x6 grid of 2x2x3 mm voxels
    doubled is at the far corner: |(31, 31, 5) * (2, 2, 3)| per axis, 62 mm in x and y."""
    write_volume(Volume(phantom(), AFFINE), tmp_path / "t.nii.gz")
    write_volume(Volume(phantom(), AFFINE), tmp_path / "ok.nii.gz")
    write_volume(Volume(phantom(), affine, units=units), tmp_path / "x.nii.gz")
    study = {"id": "a", "target": "t.nii.gz", "inputs": ["ok.nii.gz", "x.nii.gz"]}
    m = load_manifest(_write(tmp_path, {"studies": [study]}))
    with pytest.raises(TgdpetError, match=f"study 'a': input #2 \\(.*x.nii.gz\\) .*{message}"):
        load_studies(m, "train")


def test_an_input_within_the_grid_tolerance_is_accepted(tmp_path):
    write_volume(Volume(phantom(), AFFINE), tmp_path / "t.nii.gz")
    write_volume(Volume(phantom(), shifted(1e-4)), tmp_path / "x.nii.gz")
    m = load_manifest(_write(tmp_path, {"studies": [{"id": "a", "target": "t.nii.gz", "inputs": ["x.nii.gz"]}]}))
    assert load_studies(m, "train")[0].shape == (6, 32, 32)


def test_studies_are_normalised_by_their_input(dataset):
    studies = load_studies(load_manifest(dataset), "train")
    s = studies[0]
    assert s.target.dtype == np.float32 and s.shape == (6, 32, 32)
    assert s.scales == [intensity_scale(read_volume(p).data) for p in load_manifest(dataset).studies[0].inputs]
    assert s.body.sum() > 0.3 * s.body.size and not s.body.all()


# --------------------------------------------------------------------------- patches


def test_patches_shape_and_determinism(dataset):
    studies = load_studies(load_manifest(dataset), "train")
    ds = PatchDataset(studies, patch_size=16, in_slices=3, length=8, seed=7)
    x, y = ds[3]
    assert x.shape == y.shape == (3, 16, 16) and x.dtype == y.dtype == torch.float32
    again = PatchDataset(studies, patch_size=16, in_slices=3, length=8, seed=7)
    assert torch.equal(again[3][0], x) and torch.equal(again[3][1], y)
    ds.set_epoch(1)
    assert not torch.equal(ds[3][0], x)
    other_rank = PatchDataset(studies, patch_size=16, in_slices=3, length=8, seed=7, rank=1)
    assert not torch.equal(other_rank[3][0], x)
    with pytest.raises(IndexError):
        ds[8]
    with pytest.raises(TgdpetError, match="smaller than the 64x64 patches"):
        PatchDataset(studies, patch_size=64, in_slices=3, length=8, seed=0)


def test_patches_do_not_depend_on_the_number_of_workers(dataset):
    ds = PatchDataset(load_studies(load_manifest(dataset), "train"), patch_size=16, in_slices=3, length=16, seed=3)
    ds.set_epoch(2)
    serial = list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0))
    parallel = list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(serial, parallel))


def test_patch_pairs_share_the_input_scale():
    target = np.full((4, 16, 16), 4.0, np.float32)
    study = Study.from_arrays("c", target, [np.full((4, 16, 16), 2.0, np.float32)])
    x, y = PatchDataset([study], patch_size=8, in_slices=3, length=1, seed=0)[0]
    assert torch.all(x == 1.0) and torch.all(y == 2.0)


def test_patch_centres_fall_inside_the_body():
    vol = np.zeros((5, 32, 32), np.float32)
    vol[:, 12:20, 10:18] = 1.0  # a small "body" in air
    study = Study.from_arrays("b", vol, [vol])
    ds = PatchDataset([study], patch_size=8, in_slices=3, length=200, seed=1, flips=False)
    centres = torch.stack([ds[i][1][1, 4, 4] for i in range(len(ds))])
    assert torch.all(centres > 0)  # never an air centre, though air fills 94 % of the volume


def test_flips_reverse_the_stack_consistently():
    z = np.arange(6, dtype=np.float32)[:, None, None] + 1
    target = np.broadcast_to(z, (6, 16, 16)).copy()
    study = Study.from_arrays("z", target, [target * 2])
    ds = PatchDataset([study], patch_size=8, in_slices=3, length=64, seed=2)
    orders = set()
    for i in range(len(ds)):
        x, y = ds[i]
        assert torch.allclose(x, 2 * y)  # input and target flipped the same way (both / input scale)
        d = torch.sign(x[2, 0, 0] - x[0, 0, 0]).item()
        orders.add(d)
    assert orders == {-1.0, 1.0}


def test_detail_map_marks_a_lesion_not_flat_tissue():
    x = np.ones((9, 20, 20), np.float32)
    x[4, 10, 10] = 5.0
    d = detail_map(x, np.ones(x.shape, bool))
    # The lesion voxel exceeds its 5x5x5 box mean (4 / 125 above 1) by 4 - 4 / 125.
    assert d[4, 10, 10] == pytest.approx(4 - 4 / 125, rel=1e-5)
    assert d[4, 2, 2] == 0.0 and d[0, 0, 0] == 0.0  # flat tissue, edge-replicated borders
    assert detail_map(x, np.zeros(x.shape, bool)).max() == 0.0


@pytest.mark.parametrize("fraction, expected", [(0.0, 16 / 1296), (1.0, 1.0)])
def test_structure_fraction_draws_centres_where_the_target_has_detail(fraction, expected):
    """16 of 1296 body voxels carry all the detail: uniform centres hit them 1.2 % of the time, weighted always."""
    target = np.ones((4, 18, 18), np.float32)
    target[1:3, 8:10, 8:12] = 8.0  # a 2x2x4 lesion of 16 voxels
    study = Study.from_arrays("l", target, [target], detail=np.where(target > 1, 1.0, 0.0).astype(np.float32))
    ds = PatchDataset([study], patch_size=8, in_slices=3, length=2000, seed=1, structure_fraction=fraction)
    _, zyx = ds.centres(np.random.default_rng(1), 4000)
    share = float(np.mean(target[tuple(zyx.T)] > 1))
    assert share == pytest.approx(expected, abs=0.006 if fraction == 0 else 0)
    x, y = ds.__getitems__(list(range(64)))  # the patches themselves: every target patch holds the lesion
    assert x.shape == (64, 3, 8, 8)
    if fraction == 1.0:
        assert bool((y.amax(dim=(1, 2, 3)) > 1).all())


def test_structure_seeking_centres_count_detail_in_units_of_each_study_s_mean_uptake():
    """Two equal regions with detail 1 and 2 draw 1/3 and 2/3 of the centres.

    The same study stored in SUV and in Bq/mL (x 5000) draws half the centres each (tgdpet 0.2 counted
    raw detail, so the Bq/mL copy took 5000 of every 5001, and a heavier patient's lower
    concentrations gave fewer).
    """
    target = np.ones((4, 18, 18), np.float32)
    detail = np.zeros_like(target)
    detail[1:3, 2:6, 2:6], detail[1:3, 10:14, 10:14] = 1.0, 2.0
    suv = Study.from_arrays("suv", target, [target], detail=detail)
    bqml = Study.from_arrays("bqml", target * 5000, [target * 5000], detail=detail * 5000)
    ds = PatchDataset([suv, bqml], patch_size=8, in_slices=3, length=64, seed=1, structure_fraction=1.0)
    study, zyx = ds.centres(np.random.default_rng(2), 8000)
    assert float(np.mean(study == 0)) == pytest.approx(0.5, abs=0.02)
    assert float(np.mean(detail[tuple(zyx.T)] == 2.0)) == pytest.approx(2 / 3, abs=0.02)


def test_a_batch_is_the_same_whatever_the_loader_split():
    """Batches are drawn whole: the DataLoader with workers gives the batches drawn in this process."""
    rng = np.random.default_rng(0)
    target = rng.gamma(4.0, 1.0, size=(6, 20, 20)).astype(np.float32)
    study = Study.from_arrays("w", target, [target * 1.1, target * 0.9])
    ds = PatchDataset([study], patch_size=8, in_slices=3, length=32, seed=5, structure_fraction=0.5)
    direct = [ds.__getitems__(list(range(k, k + 8))) for k in range(0, 32, 8)]
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, collate_fn=PatchDataset.collate)
    for (x, y), (dx, dy) in zip(loader, direct, strict=True):
        assert torch.equal(x, dx) and torch.equal(y, dy)


def test_structure_fraction_is_checked():
    study = Study.from_arrays("s", np.ones((3, 8, 8), np.float32), [np.ones((3, 8, 8), np.float32)])
    with pytest.raises(TgdpetError, match="structure-fraction"):
        PatchDataset([study], patch_size=8, in_slices=3, length=4, seed=0, structure_fraction=1.5)


def test_nonfinite_voxels_are_refused():
    bad = np.ones((3, 8, 8), np.float32)
    bad[1, 2, 2] = np.nan
    with pytest.raises(TgdpetError, match="NaN or infinite"):
        Study.from_arrays("n", np.ones((3, 8, 8), np.float32), [bad])


def _protocol_folder(folder: Path, codes: dict) -> None:
    """A simulator-shaped protocol folder: images beside the manifest, labels and truth one level up."""
    (folder / "s0").mkdir(parents=True)
    (folder.parent / "labels").mkdir(exist_ok=True)
    (folder.parent / "truth").mkdir(exist_ok=True)
    for name in ("s0/target.nii.gz", "s0/in.nii.gz", "../labels/s0.nii.gz", "../truth/s0.nii.gz"):
        (folder / name).write_bytes(b"not read by manifests")
    study = {"id": "s0", "split": "train", "target": "s0/target.nii.gz", "inputs": ["s0/in.nii.gz"],
             "labels": "../labels/s0.nii.gz", "meta": {"truth": "../truth/s0.nii.gz", "body": "high"}}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps({"label_codes": codes, "studies": [study]}))


def test_merged_manifest_names_every_source_file_from_its_own_folder(tmp_path):
    """Ids tagged by source folder, every path relative to the merged manifest and pointing at the source's file,
    even where a source is reached through a symbolic link and its labels lie one level up (``../labels``)."""
    codes = {"liver": 3}
    _protocol_folder(tmp_path / "scan4mm" / "v1", codes)
    _protocol_folder(tmp_path / "scan27mm" / "v1", codes)
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "v1-2.7mm").symlink_to(tmp_path / "scan27mm" / "v1", target_is_directory=True)
    (tmp_path / "out").mkdir()
    merged = load_manifest(merge_manifests([tmp_path / "scan4mm" / "v1", tmp_path / "links" / "v1-2.7mm"],
                                           tmp_path / "out" / "mix.json"))  # fmt: skip
    assert [s.id for s in merged.studies] == ["v1/s0", "v1-2.7mm/s0"] and merged.label_codes == codes
    raw = json.loads((tmp_path / "out" / "mix.json").read_text())["studies"]
    for study, entry, scan in zip(merged.studies, raw, ("scan4mm", "scan27mm")):
        assert not Path(entry["target"]).is_absolute()
        assert study.target.samefile(tmp_path / scan / "v1" / "s0" / "target.nii.gz")
        assert study.labels.samefile(tmp_path / scan / "labels" / "s0.nii.gz")
        assert (merged.path.parent / entry["meta"]["truth"]).samefile(tmp_path / scan / "truth" / "s0.nii.gz")
        assert entry["meta"]["body"] == "high"


def test_merging_refuses_sources_that_code_labels_differently_and_writes_nothing(tmp_path):
    _protocol_folder(tmp_path / "a" / "v1", {"liver": 3})
    _protocol_folder(tmp_path / "b" / "v2", {"liver": 4})
    with pytest.raises(TgdpetError, match="codes its labels differently"):
        merge_manifests([tmp_path / "a" / "v1", tmp_path / "b" / "v2"], tmp_path / "mix.json")
    assert not (tmp_path / "mix.json").exists()
