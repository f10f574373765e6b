"""What a model was trained on (tgdpet.domain): recorded by training, shown by models, warned about by denoise."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import make_volume, trained_like_model, write_test_nifti

from tgdpet.checkpoint import save_model
from tgdpet.cli import main
from tgdpet.domain import Domain, domain_of, training_domain

FOUR_MM = Domain(voxel_min_mm=(4.0, 4.0, 4.0), voxel_max_mm=(4.0, 4.0, 4.0), units=("BQML",), protocols=("v1",))


def test_warnings_name_coarser_voxels_and_other_units_only():
    assert FOUR_MM.warnings((4.0, 4.0, 4.0), "BQML") == []
    assert FOUR_MM.warnings((2.0, 1.6, 1.6), "BQML") == []  # finer: denoised on coarser grids up to the model's
    assert FOUR_MM.warnings((4.5, 4.5, 4.5), "SUV") == []  # SUV is Bq/mL times a factor the normalisation removes
    (coarse,) = FOUR_MM.warnings((5.0, 4.0, 4.0), "BQML")
    assert "coarser" in coarse and "5 x 4 x 4 mm" in coarse
    (counts,) = FOUR_MM.warnings((4.0, 4.0, 4.0), "CNTS")
    assert "CNTS" in counts and "Bq/mL" in counts
    assert len(FOUR_MM.warnings((6.0, 6.0, 6.0), "CNTS")) == 2


def test_training_domain_spans_the_images_and_a_fine_tune_keeps_its_base():
    d = training_domain([(4.0, 2.0, 2.0), (3.0, 2.7, 2.7)], ["BQML", "bqml"], ["v1", "v2", "v1"], [30, 180, 60])
    assert d.voxel_min_mm == (3.0, 2.0, 2.0) and d.voxel_max_mm == (4.0, 2.7, 2.7)
    assert d.units == ("BQML",) and d.protocols == ("v1", "v2") and d.count_levels_s == (30.0, 180.0)
    both = FOUR_MM.union(d)
    assert both.voxel_min_mm == (3.0, 2.0, 2.0) and both.voxel_max_mm == (4.0, 4.0, 4.0)
    assert both.protocols == ("v1", "v2")
    assert Domain.from_json(json.loads(json.dumps(both.to_json()))) == both


def test_files_from_before_the_record_use_their_voxel_size():
    assert domain_of({"voxel_size_mm": [4.0, 3.0, 2.0]}).voxel_max_mm == (2.0, 3.0, 4.0)  # (x, y, z) -> (z, y, x)
    assert domain_of({}) is None


@pytest.fixture
def four_mm_model(tmp_path):
    return save_model(tmp_path / "m.safetensors", trained_like_model(), preset="tiny",
                      provenance={"domain": FOUR_MM.to_json()})  # fmt: skip


def _denoise(*args):
    return CliRunner().invoke(main, ["denoise", *args, "--device", "cpu", "--precision", "fp32", "--no-progress"])


def test_denoise_warns_about_coarse_voxels_and_counts_and_still_denoises(tmp_path, four_mm_model):
    coarse = write_test_nifti(tmp_path / "coarse.nii.gz", make_volume(shape=(6, 12, 12), spacing=(6.0, 6.0, 6.0)))
    counts = write_test_nifti(tmp_path / "counts.nii.gz", make_volume(shape=(6, 12, 12), spacing=(4.0, 4.0, 4.0),
                                                                       units="CNTS"))  # fmt: skip
    fine = write_test_nifti(tmp_path / "fine.nii.gz", make_volume(shape=(6, 12, 12), spacing=(2.0, 2.0, 2.0)))
    for path, expected in [(coarse, "coarser than any the model was trained on"), (counts, "it is in CNTS")]:
        result = _denoise(str(path), "--model", str(four_mm_model))
        assert result.exit_code == 0, result.output
        assert f"warning: {path.name}: " in result.stderr and expected in result.stderr
        assert result.stderr.count("warning:") == 1
    result = _denoise(str(fine), "--model", str(four_mm_model))
    assert result.exit_code == 0 and "warning" not in result.stderr


def test_a_study_tree_report_keeps_the_warnings(tmp_path, four_mm_model):
    tree = tmp_path / "tree"
    tree.mkdir()
    write_test_nifti(tree / "a.nii.gz", make_volume(shape=(6, 12, 12), spacing=(6.0, 6.0, 6.0)))
    write_test_nifti(tree / "b.nii.gz", make_volume(shape=(6, 12, 12), spacing=(4.0, 4.0, 4.0)))
    result = _denoise(str(tree), "--model", str(four_mm_model))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "tree_denoised" / "tgdpet-report.json").read_text())
    by_name = {entry["input"].rsplit("/", 1)[-1]: entry for entry in report["inputs"]}
    assert len(by_name["a.nii.gz"]["warnings"]) == 1 and "coarser" in by_name["a.nii.gz"]["warnings"][0]
    assert by_name["b.nii.gz"]["warnings"] == []
    assert "warning: a.nii.gz:" in result.output


@pytest.mark.parametrize("damaged", [{"voxel_min_mm": [4.0, 4.0]}, {"voxel_min_mm": "4 mm"}, "4 mm"])
def test_a_damaged_domain_record_is_refused_with_one_sentence_and_nothing_written(tmp_path, damaged):
    model = save_model(tmp_path / "m.safetensors", trained_like_model(), preset="tiny",
                       provenance={"domain": damaged})  # fmt: skip
    image = write_test_nifti(tmp_path / "in.nii.gz", make_volume(shape=(6, 12, 12)))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _denoise(str(image), "--model", str(model))
    assert result.exit_code == 2 and "record of what it was trained on ('domain') is damaged" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_warning_about_a_dicom_series_in_a_tree_names_the_series_not_a_slice(tmp_path, four_mm_model):
    from helpers import write_test_series

    tree = tmp_path / "tree"
    tree.mkdir()
    write_test_series(tree / "PET_coarse", make_volume(shape=(6, 12, 12), spacing=(6.0, 6.0, 6.0)))
    write_test_nifti(tree / "b.nii.gz", make_volume(shape=(6, 12, 12), spacing=(4.0, 4.0, 4.0)))
    result = _denoise(str(tree), "--model", str(four_mm_model))
    assert result.exit_code == 0, result.output
    assert "warning: PET_coarse: " in result.output and "slice_" not in result.output.split("warning:")[1]
