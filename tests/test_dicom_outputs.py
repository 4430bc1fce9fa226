"""DICOM SEG and RTSTRUCT outputs: exact on the source grid in every orientation, valid, refused cleanly.

The SEG is decoded by dcmqi and the RTSTRUCT filled back from its millimetre contours
(tests/dicom_readers.py); both are compared with the label map in patient millimetres.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy.spatial.transform import Rotation

from dicom_readers import label_map_on_slice, rtstruct_masks, seg_as_label_map
from organseg.cli import main
from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.dicom.ct_series import write_ct_series
from organseg.dicom.outputs import output_paths, parse_output_types, write_outputs
from organseg.dicom.rtstruct import write_rtstruct
from organseg.dicom.seg import write_seg
from organseg.dicom.source import read_source_series
from organseg.errors import InputError
from organseg.geometry import Geometry
from organseg.io import Volume, read_image, read_label, write_label
from organseg.labels import FLARE22, LabelSet
from organseg.phantom import generate_case, write_dataset
from organseg.phantom.orientations import ORIENTATIONS
from organseg.preprocess.orientation import all_axis_transforms
from organseg.runs import run_training

NAMES = {name: label for label, name in FLARE22.names}
GALLBLADDER_STRUCTURE = ["SCT", "28231008", "Gallbladder structure"]
SERIES_COUNT = len(ORIENTATIONS)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """Phantom CT series in the five orientations (imagesTs/phantom_t00N) with NIfTI label maps."""
    root = tmp_path_factory.mktemp("series") / "phantoms"
    return write_dataset(root, labeled=0, unlabeled=0, test=SERIES_COUNT, seed=11, shape=(48, 40, 28), dicom="mixed")


def _case(series: Path, number: int) -> tuple[Path, Path]:
    return series / "imagesTs" / f"phantom_t{number:03d}", series / "labelsTs" / f"phantom_t{number:03d}.nii.gz"


@pytest.fixture(scope="module")
def real_case(real_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The real 3-slice series and a label map on its grid: its liver, its spine as 'aorta', two small blocks."""
    folder = real_data / "dcmqi_3slice" / "dicom"
    image = read_image(folder)
    marks = read_label(real_data / "dcmqi_3slice" / "liver_spine_seg.nrrd").array
    labels = np.zeros(image.geometry.shape, np.uint8)
    labels[marks == 1], labels[marks == 2] = NAMES["liver"], NAMES["aorta"]
    labels[300:330, 100:112, 1] = NAMES["left adrenal gland"]
    labels[40:52, 400:430, :] = NAMES["right kidney"]
    labels[44:48, 410:420, 1] = 0  # a hole
    path = tmp_path_factory.mktemp("real") / "labels.nii.gz"
    write_label(labels, image.geometry, path)
    return folder, path


def _write(kind: str, folder: Path, label_map: Path, target: Path) -> Path:
    labels = read_label(label_map)
    source = read_source_series(folder, labels.geometry)
    writer = {"seg": write_seg, "rtstruct": write_rtstruct}[kind]
    assert writer(labels, source, FLARE22, target, "test-model")
    return target


@pytest.mark.parametrize("number", range(1, SERIES_COUNT + 1), ids=ORIENTATIONS)
def test_seg_decoded_by_dcmqi_equals_the_label_map_in_every_orientation(series, number, tmp_path) -> None:
    folder, label_map = _case(series, number)
    seg = _write("seg", folder, label_map, tmp_path / "case.seg.dcm")
    decoded = seg_as_label_map(seg, label_map, NAMES, tmp_path / "dcmqi")
    expected = read_label(label_map).array.transpose(2, 1, 0)
    assert (decoded == expected).all()


def test_seg_of_the_real_series_is_exact_and_describes_its_organs(real_case, tmp_path) -> None:
    folder, label_map = real_case
    seg = _write("seg", folder, label_map, tmp_path / "case.seg.dcm")
    assert (seg_as_label_map(seg, label_map, NAMES, tmp_path / "dcmqi") == read_label(label_map).array.T).all()
    dataset = pydicom.dcmread(seg)
    source = pydicom.dcmread(folder / "01.dcm", stop_before_pixels=True)
    assert dataset.StudyInstanceUID == source.StudyInstanceUID
    assert dataset.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert dataset.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    segments = {s.SegmentLabel: s for s in dataset.SegmentSequence}
    assert sorted(segments) == ["aorta", "left adrenal gland", "liver", "right kidney"]  # empty organs: none
    liver = segments["liver"]
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
    assert liver.SegmentAlgorithmType == "AUTOMATIC" and liver.SegmentAlgorithmName == "organseg"
    kidney = segments["right kidney"].SegmentedPropertyTypeCodeSequence[0]
    assert kidney.CodeValue == "64033007" and kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _rtstruct_dice(rtstruct: Path, folder: Path, label_map: Path) -> dict[str, tuple[float, float]]:
    """Per ROI: (Dice of the filled contours against the label map in mm, organ volume in mL)."""
    masks = rtstruct_masks(rtstruct, folder)
    slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    truth = {d.SOPInstanceUID: label_map_on_slice(label_map, d) for d in slices}
    voxel_ml = float(np.prod(read_label(label_map).geometry.spacing_mm)) / 1000
    scores = {}
    for name, per_slice in masks.items():
        label = NAMES[name]
        empty = np.zeros_like(next(iter(truth.values())), bool)
        filled = np.stack([per_slice.get(uid, empty) for uid in truth])
        expected = np.stack([plane == label for plane in truth.values()])
        scores[name] = (_dice(filled, expected), expected.sum() * voxel_ml)
    return scores


@pytest.mark.parametrize("number", range(1, SERIES_COUNT + 1), ids=ORIENTATIONS)
def test_rtstruct_contours_fill_back_to_the_label_map_in_patient_mm(series, number, tmp_path) -> None:
    folder, label_map = _case(series, number)
    rtstruct = _write("rtstruct", folder, label_map, tmp_path / "case.rtstruct.dcm")
    scores = _rtstruct_dice(rtstruct, folder, label_map)
    assert len(scores) >= 10
    assert all(dice == 1.0 for dice, _ in scores.values()), scores


def test_mirrored_contours_fail_the_round_trip(series, tmp_path) -> None:
    folder, label_map = _case(series, 1)
    rtstruct = _write("rtstruct", folder, label_map, tmp_path / "case.rtstruct.dcm")
    dataset = pydicom.dcmread(rtstruct)
    centre = read_label(label_map).geometry.index_to_world(np.asarray(read_label(label_map).geometry.shape) / 2)
    for roi in dataset.ROIContourSequence:
        for contour in roi.ContourSequence:
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            points[:, 0] = 2 * centre[0] - points[:, 0]  # left-right mirror
            contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
    dataset.save_as(tmp_path / "mirrored.dcm")
    scores = _rtstruct_dice(tmp_path / "mirrored.dcm", folder, label_map)
    assert min(dice for dice, _ in scores.values()) < 0.97


def test_rtstruct_of_the_real_series_matches_and_rt_utils_agrees(real_case, tmp_path) -> None:
    from rt_utils import RTStructBuilder

    folder, label_map = real_case
    rtstruct = _write("rtstruct", folder, label_map, tmp_path / "case.rtstruct.dcm")
    scores = _rtstruct_dice(rtstruct, folder, label_map)
    assert all(dice >= 0.97 for dice, volume_ml in scores.values() if volume_ml > 1), scores
    assert all(dice == 1.0 for dice, _ in scores.values()), scores
    # rt-utils, an independent reader, sees the same organs above 1 mL; it rounds points to
    # pixel centres and fills their outlines too, so it adds a rim that smaller organs feel.
    ours = rtstruct_masks(rtstruct, folder)
    theirs = RTStructBuilder.create_from(str(folder), str(rtstruct))
    order = [
        d.SOPInstanceUID
        for d in sorted(
            (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()),
            key=lambda d: float(d.ImagePositionPatient[2]),
        )
    ]
    for name in (name for name, (_, volume_ml) in scores.items() if volume_ml > 1):
        mask = theirs.get_roi_mask_by_name(name)  # [row, col, slice], slices by position
        empty = np.zeros(mask.shape[:2], bool)
        mine = np.stack([ours[name].get(uid, empty) for uid in order], axis=-1)
        assert _dice(mask, mine) >= 0.95, name


def test_rtstruct_handles_holes_islands_and_short_ds_values(real_case, tmp_path) -> None:
    folder, label_map = real_case
    rtstruct = _write("rtstruct", folder, label_map, tmp_path / "case.rtstruct.dcm")
    dataset = pydicom.dcmread(rtstruct)
    names = {roi.ROINumber: roi.ROIName for roi in dataset.StructureSetROISequence}
    by_name = {names[roi.ReferencedROINumber]: roi for roi in dataset.ROIContourSequence}
    kidney = by_name["right kidney"].ContourSequence
    assert len(kidney) == 3 + 1  # one outline per slice, and the hole on the middle slice
    for roi in dataset.ROIContourSequence:
        assert len(roi.ROIDisplayColor) == 3
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            assert contour.NumberOfContourPoints * 3 == len(contour.ContourData)
    raw = pydicom.dcmread(rtstruct, defer_size=None)
    for roi in raw.ROIContourSequence:
        for contour in roi.ContourSequence:
            assert max(len(str(v)) for v in contour.ContourData) <= 16
    liver = next(o for o in dataset.RTROIObservationsSequence if names[o.ReferencedROINumber] == "liver")
    assert liver.RTROIIdentificationCodeSequence[0].CodeValue == "10200004"


def _dciodvfy_errors(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:  # .ci/run installs it, so CI always runs this check
        pytest.skip("dciodvfy not found: install the Debian package dicom3tools (apt-get install dicom3tools)")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_dciodvfy_finds_no_errors_in_seg_rtstruct_and_phantom_ct(series, real_case, tmp_path) -> None:
    for folder, label_map in (real_case, _case(series, 4)):
        assert _dciodvfy_errors(_write("seg", folder, label_map, tmp_path / "case.seg.dcm")) == []
        assert _dciodvfy_errors(_write("rtstruct", folder, label_map, tmp_path / "case.rtstruct.dcm")) == []
    for number in range(1, SERIES_COUNT + 1):  # a CT slice of every orientation
        assert _dciodvfy_errors(next(_case(series, number)[0].iterdir())) == []


def _copy_series(folder: Path, target: Path, change) -> Path:
    target.mkdir()
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        change(dataset)
        dataset.save_as(target / path.name)
    return target


def test_blank_sop_uids_are_recovered_from_the_file_meta(series, tmp_path) -> None:
    folder, label_map = _case(series, 2)

    def blank(dataset):
        dataset.SOPClassUID, dataset.SOPInstanceUID = "", ""

    copy = _copy_series(folder, tmp_path / "anonymised", blank)
    labels = read_label(label_map)
    source = read_source_series(copy, labels.geometry)
    originals = {pydicom.dcmread(p).SOPInstanceUID for p in folder.iterdir()}
    assert {s.SOPInstanceUID for s in source.slices} == originals
    assert write_seg(labels, source, FLARE22, tmp_path / "case.seg.dcm", "test-model")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: setattr(d, "StudyInstanceUID", ""), "no Study Instance UID"),
        (lambda d: setattr(d, "FrameOfReferenceUID", pydicom.uid.generate_uid()), "Frame of Reference UIDs"),
    ],
    ids=["blank study", "two frames of reference"],
)
def test_series_that_cannot_be_referred_to_is_refused_in_one_line(series, tmp_path, change, words) -> None:
    folder, label_map = _case(series, 1)
    copy = _copy_series(folder, tmp_path / "messy", change)
    with pytest.raises(InputError) as caught:
        read_source_series(copy, read_label(label_map).geometry)
    assert words in str(caught.value) and str(copy) in str(caught.value) and "\n" not in str(caught.value)


def test_output_types_and_their_names(tmp_path) -> None:
    assert parse_output_types("rtstruct, NIFTI") == ("nifti", "rtstruct")
    paths = output_paths(tmp_path / "case.nii.gz", ("nifti", "dicom-seg", "rtstruct"))
    assert [p.name for p in paths.values()] == ["case.nii.gz", "case.seg.dcm", "case.rtstruct.dcm"]
    for bad in ("", "nifti,png"):
        with pytest.raises(InputError, match="--output-type"):
            parse_output_types(bad)


def test_empty_label_map_writes_no_dicom_object_and_unnamed_values_are_refused(series, tmp_path) -> None:
    folder, label_map = _case(series, 1)
    labels = read_label(label_map)
    source = read_source_series(folder, labels.geometry)
    paths = output_paths(tmp_path / "case.nii.gz", ("nifti", "dicom-seg", "rtstruct"))
    empty = Volume(np.zeros_like(labels.array), labels.geometry)
    assert write_outputs(empty, paths, FLARE22, "m", source) == [paths["nifti"]]
    unnamed = Volume(np.where(labels.array == 1, 40, labels.array).astype(np.uint8), labels.geometry)
    with pytest.raises(InputError, match=r"\[40\] have no name"):
        write_outputs(unnamed, output_paths(tmp_path / "other.nii.gz", ("dicom-seg",)), FLARE22, "m", source)
    assert not list(tmp_path.glob("other*")) and not list(tmp_path.glob(".*"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    data = write_dataset(root / "phantoms", labeled=2, unlabeled=0, test=0, seed=5, shape=(32, 32, 20))
    meta = json.loads((data / "dataset.json").read_text())
    meta["label_codes"] = {"gallbladder": {"type": GALLBLADDER_STRUCTURE}}
    (data / "dataset.json").write_text(json.dumps(meta))
    config = resolve_config("tiny", overrides=["stage1.epochs=1", "stage2.epochs=1"])
    run_training(discover_dataset(data), root / "run", config, device="cpu")
    return root / "run"


def test_predict_writes_all_three_outputs_for_a_series_and_a_folder_of_series(series, tiny_run, tmp_path) -> None:
    folder, _ = _case(series, 3)
    target = tmp_path / "case.nii.gz"
    types = ["--output-type", "nifti,dicom-seg,rtstruct", "--device", "cpu"]
    assert main(["predict", str(tiny_run), str(folder), str(target), *types]) == 0
    labels = read_label(target)
    assert labels.array.any(), "the tiny model found no organ, so this test proves nothing about DICOM outputs"
    decoded = seg_as_label_map(target.with_name("case.seg.dcm"), target, NAMES, tmp_path / "dcmqi")
    assert (decoded == labels.array.T).all()
    assert all(
        dice == 1.0 for dice, _ in _rtstruct_dice(target.with_name("case.rtstruct.dcm"), folder, target).values()
    )
    # A folder of series: one set per case, named after the series folders.
    assert main(["predict", str(tiny_run), str(series / "imagesTs"), str(tmp_path / "all"), *types]) == 0
    names = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert names == sorted(
        f"phantom_t{n:03d}{s}" for n in range(1, 6) for s in (".nii.gz", ".seg.dcm", ".rtstruct.dcm")
    )


def test_dicom_output_for_a_nifti_input_is_refused_before_anything_is_written(tiny_run, tmp_path, capsys) -> None:
    image = next((tiny_run.parent / "phantoms" / "imagesTr").iterdir())
    out = tmp_path / "out"
    out.mkdir()
    assert main(["predict", str(tiny_run), str(image), str(out / "case.nii.gz"), "--output-type", "dicom-seg"]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "need a DICOM series" in error[0] and "Traceback" not in error[0]
    assert not any(out.iterdir())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_outputs_are_exact_in_random_orientations(seed, tmp_path) -> None:
    """One of the 24 right-handed axis orders, then any rotation: SEG and RTSTRUCT still land on the grid."""
    rng = np.random.default_rng(seed)
    image, labels = generate_case(seed, (40, 36, 24), reorient=False)
    right_handed = [
        t for t in all_axis_transforms() if np.linalg.det(t.apply_geometry(image.geometry).direction_matrix) > 0
    ]
    transform = right_handed[rng.integers(len(right_handed))]
    stored = transform.apply_geometry(image.geometry)
    rotated = Rotation.random(random_state=seed).as_matrix() @ stored.direction_matrix
    geometry = Geometry(stored.shape, stored.spacing_mm, stored.origin_mm, np.round(rotated, 6).ravel())
    image = Volume(np.ascontiguousarray(transform.apply(image.array)), geometry)
    labels = Volume(np.ascontiguousarray(transform.apply(labels.array)), geometry)
    folder = write_ct_series(image, tmp_path / "series", f"random {seed}", "random")
    label_map = tmp_path / "labels.nii.gz"
    write_label(labels.array, read_image(folder).geometry, label_map)
    seg = _write("seg", folder, label_map, tmp_path / "case.seg.dcm")
    assert (seg_as_label_map(seg, label_map, NAMES, tmp_path / "dcmqi") == labels.array.T).all()
    rtstruct = _write("rtstruct", folder, label_map, tmp_path / "case.rtstruct.dcm")
    assert all(dice == 1.0 for dice, _ in _rtstruct_dice(rtstruct, folder, label_map).values())


def test_label_codes_of_dataset_json_reach_the_trained_model(tiny_run) -> None:
    from organseg.open_model import open_segmenter

    label_set = open_segmenter(tiny_run, "cpu").label_set
    assert label_set.concepts("gallbladder")[0] == tuple(GALLBLADDER_STRUCTURE)
    assert label_set.concepts("liver")[0] == ("SCT", "10200004", "Liver")


def test_a_custom_label_set_is_coded_by_its_own_codes_or_generically(series, tmp_path) -> None:
    folder, label_map = _case(series, 1)
    labels = read_label(label_map)
    tumour = ["SCT", "108369006", "Neoplasm"]
    altered = ["SCT", "49755003", "Morphologically Altered Structure"]
    custom = LabelSet.from_mapping(
        {"hepar": 1, "tumour": 2, "blob": 3, **{f"organ {n}": n for n in range(4, 14)}},
        codes={"tumour": {"type": tumour, "category": altered}},
    )
    source = read_source_series(folder, labels.geometry)
    assert write_seg(labels, source, custom, tmp_path / "c.seg.dcm", "m")
    segments = {s.SegmentLabel: s for s in pydicom.dcmread(tmp_path / "c.seg.dcm").SegmentSequence}
    code = segments["tumour"].SegmentedPropertyTypeCodeSequence[0]
    assert [code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning] == tumour
    assert segments["tumour"].SegmentedPropertyCategoryCodeSequence[0].CodeValue == altered[1]
    assert segments["hepar"].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Organ"  # generic, named
    assert write_rtstruct(labels, source, custom, tmp_path / "c.rt.dcm", "m")
    observations = pydicom.dcmread(tmp_path / "c.rt.dcm").RTROIObservationsSequence
    assert observations[1].RTROIIdentificationCodeSequence[0].CodeValue == tumour[1]
