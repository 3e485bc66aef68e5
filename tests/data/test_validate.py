"""`egnet data validate`: every kind of bad pair is caught, named, and never modified."""

from __future__ import annotations

import hashlib
import json
import shutil

import cv2
import numpy as np
import pytest

from egnet.cli import main
from egnet.data import layout
from egnet.data.synth import synthesize
from egnet.data.validate import png_problem, validate
from tests.support import PARAMS

SIZE = (256, 128)
ARGS = ["--params", str(PARAMS), "--set", f"data.image_size=[{SIZE[0]},{SIZE[1]}]"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("val") / "nc"
    synthesize(root, num=8, seed=11, size=SIZE)
    return root


@pytest.fixture
def data(clean, tmp_path):
    """A private copy of the clean dataset, free to break."""
    root = tmp_path / "nc"
    shutil.copytree(clean, root)
    return root


def _pairs(root):
    return layout.scan(root).pairs


def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _only_problem(root, kind):
    report = validate(root, SIZE, workers=1)
    assert not report["ok"]
    kinds = [p["kind"] for p in report["problems"]]
    assert kind in kinds, report["problems"]
    return [p for p in report["problems"] if p["kind"] == kind], report


def test_clean_synthetic_data_passes(clean):
    report = validate(clean, SIZE, workers=1)
    assert report["ok"] and report["problems"] == []
    assert report["num_pairs"] == report["num_good"] == 8
    assert report["nightcity_plus_labels"] == 0
    # the pool gives the same report
    assert validate(clean, SIZE, workers=2) == report


def test_truncated_png(data):
    pair = _pairs(data)[0]
    raw = pair.image.read_bytes()
    pair.image.write_bytes(raw[: len(raw) // 2])
    (p,), _ = _only_problem(data, "truncated")
    assert p["file"] == str(pair.image) and p["stem"] == pair.stem and "truncated" in p["message"]


def test_corrupt_chunk_crc():
    img = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    broken = bytearray(img)
    broken[40] ^= 0xFF          # inside IDAT data, so its CRC no longer matches
    assert png_problem(img) is None
    assert png_problem(bytes(broken))[0] == "corrupt"


@pytest.mark.parametrize(
    ("which", "array", "kind", "words"),
    [
        ("image", np.zeros((128, 256, 4), np.uint8), "image_channels", "4 channel(s) (RGBA)"),
        ("image", np.zeros((128, 256), np.uint8), "image_channels", "1 channel(s) (grayscale)"),
        ("label", np.full((128, 256), 7, np.uint16), "label_depth", "16-bit"),
        ("label", np.full((128, 256, 3), 7, np.uint8), "label_channels", "3 channels"),
        ("label", np.full((128, 256), 7, np.uint8) + np.eye(128, 256, dtype=np.uint8) * 93,
         "label_values", "100"),
        ("image", np.zeros((100, 200, 3), np.uint8), "image_size", "200x100, expected 256x128"),
        ("label", np.full((64, 128), 7, np.uint8), "label_size", "128x64, expected 256x128 (or 512x256)"),
    ],
)
def test_bad_file_contents(data, which, array, kind, words):
    pair = _pairs(data)[1]
    target = pair.image if which == "image" else pair.label
    assert cv2.imwrite(str(target), array)
    probs, report = _only_problem(data, kind)
    assert [p["file"] for p in probs] == [str(target)]
    assert words in probs[0]["message"]
    assert report["num_good"] == 7 and report["bad_stems"] == [pair.stem]


def test_nightcity_plus_labels_are_info_not_problems(data):
    pair = _pairs(data)[2]
    lab, _ = layout.read_label(pair.label)
    layout.write_png(pair.label, cv2.resize(lab, (512, 256), interpolation=cv2.INTER_NEAREST), rgb=False)
    report = validate(data, SIZE, workers=1)
    assert report["ok"] and report["nightcity_plus_labels"] == 1


def test_orphans_stray_and_names(data):
    pairs = _pairs(data)
    pairs[0].label.unlink()
    pairs[1].image.unlink()
    (data / layout.IMAGES_DIR / "train" / "notes.txt").write_text("hello")
    bad = layout.image_path(data, "train", "bad name_12")
    shutil.copy(pairs[2].image, bad)
    shutil.copy(pairs[2].label, layout.label_path(data, "train", "bad name_12"))
    report = validate(data, SIZE, workers=1)
    by_kind = {p["kind"]: p for p in report["problems"]}
    assert by_kind["orphan_image"]["file"] == str(pairs[0].image)
    assert by_kind["orphan_label"]["file"] == str(pairs[1].label)
    assert by_kind["stray_file"]["file"].endswith("notes.txt")
    assert by_kind["bad_name"]["file"] == str(bad)
    dup = by_kind["duplicate"]
    assert {dup["file"], dup["message"].split("as ")[-1]} == {str(bad), str(pairs[2].image)}


def test_duplicate_image_names_both_files(data):
    a, b = _pairs(data)[:2]
    shutil.copy(a.image, b.image)
    (p,), _ = _only_problem(data, "duplicate")
    assert {p["file"], p["message"].split("as ")[-1]} == {str(a.image), str(b.image)}


def test_same_stem_in_train_and_val(data):
    pair = next(p for p in _pairs(data) if p.split == "train")
    shutil.copy(pair.label, layout.label_path(data, "val", pair.stem))
    img = layout.read_image(pair.image)
    layout.write_png(layout.image_path(data, "val", pair.stem), img[::-1].copy())   # other content
    (p,), report = _only_problem(data, "duplicate_name")
    assert p["file"] == str(layout.image_path(data, "val", pair.stem)) and "train/" in p["message"]
    assert report["num_pairs"] == 9 and report["num_good"] == 7    # the stem is set aside in both splits


def test_empty_file_and_not_png(data):
    a, b = _pairs(data)[:2]
    a.label.write_bytes(b"")
    b.image.write_bytes(b"GIF89a this is not a png at all")
    report = validate(data, SIZE, workers=1)
    kinds = {(p["kind"], p["file"]) for p in report["problems"]}
    assert ("empty", str(a.label)) in kinds
    assert ("not_png", str(b.image)) in kinds
    assert report["bad_stems"] == sorted([a.stem, b.stem])


def test_cli_exit_codes_report_and_never_modifies(data, tmp_path, capsys):
    before = _digest(data)
    report_file = tmp_path / "report.json"
    assert main(["data", "validate", str(data), "--report", str(report_file), *ARGS]) == 0
    assert "8/8 pairs good" in capsys.readouterr().out
    rep = json.loads(report_file.read_text())
    assert {"ok", "num_pairs", "problems", "num_good", "bad_stems", "nightcity_plus_labels"} <= set(rep)

    pairs = _pairs(data)
    for p in pairs[:3]:
        raw = p.image.read_bytes()
        p.image.write_bytes(raw[:100])
    before = _digest(data)
    assert main(["data", "validate", str(data), "--report", str(report_file), *ARGS]) == 1
    err = capsys.readouterr().err
    assert str(pairs[0].image) in err and "truncated" in err
    assert err.strip().splitlines()[-1].startswith("egnet: error:")
    rep = json.loads(report_file.read_text())
    assert rep["ok"] is False and len(rep["problems"]) == 3
    assert set(rep["problems"][0]) >= {"file", "kind", "message"}

    quarantine = tmp_path / "q" / "quarantine.txt"
    assert main(["data", "validate", str(data), "--quarantine", str(quarantine), *ARGS]) == 0
    assert layout.read_quarantine(quarantine) == {p.stem for p in pairs[:3]}
    assert set(layout.pairs_by_stem(data, quarantine)) == {p.stem for p in pairs[3:]}
    # too few good pairs left: exit 1 even with a quarantine list
    assert main(["data", "validate", str(data), "--quarantine", str(quarantine), *ARGS,
                 "--set", "data.min_good_pairs=6"]) == 1
    assert "min_good_pairs" in capsys.readouterr().err
    assert _digest(data) == before


def test_many_problems_are_capped_on_stderr(data, capsys):
    for p in _pairs(data):
        p.label.write_bytes(b"")
    assert main(["data", "validate", str(data), *ARGS]) == 1
    err = capsys.readouterr().err.splitlines()
    assert "  ... and 0 more" not in err
    assert sum(line.startswith("  ") for line in err) == 8   # 8 problems, under the cap of 10
    for p in _pairs(data)[:4]:
        p.image.write_bytes(b"")
    assert main(["data", "validate", str(data), *ARGS]) == 1
    err = capsys.readouterr().err.splitlines()
    assert "  ... and 2 more" in err and sum(line.startswith("  ") for line in err) == 11


def test_missing_layout_is_one_line_error(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path), *ARGS]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("egnet: error:") and "NightCity-images" in err and "\n" not in err
