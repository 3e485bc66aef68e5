"""Metrics against a hand-worked case and independent implementations.

cityscapesscripts' evaluator (mIoU, per-class IoU), torchmetrics' Jaccard index
(IoU), scikit-learn's f1_score (EF1 per bin, each averaging mode).
"""

from __future__ import annotations

import copy
import json
import math

import cv2
import numpy as np
import pytest
import torch

from egnet.data import labels
from egnet.data.exposure import BIN_NAMES, NUM_BINS
from egnet.metrics import AVERAGES, ExposureConfusion, format_table, to_mlflow

C = labels.NUM_CLASSES


def _random_batch(seed: int, n: int = 3, h: int = 24, w: int = 40, classes: int = C,
                  ignore_frac: float = 0.1, void_pred_frac: float = 0.0, empty_bins: tuple[int, ...] = ()):
    """Random trainIds gt/pred (pred mostly right, so scores are far from 0) and bins."""
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, classes, size=(n, h, w))
    pred = np.where(rng.random((n, h, w)) < 0.6, gt, rng.integers(0, classes, size=(n, h, w)))
    gt[rng.random((n, h, w)) < ignore_frac] = labels.IGNORE_INDEX
    pred[rng.random((n, h, w)) < void_pred_frac] = labels.IGNORE_INDEX
    allowed = np.array([g for g in range(NUM_BINS) if g not in empty_bins])
    bins = allowed[rng.integers(0, len(allowed), size=(n, h, w))]
    return torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(bins)


def _rank_worker(rank: int, world: int, init: str, out: str) -> None:
    """One gloo rank (torch.multiprocessing.spawn re-imports this module in each child: keep its
    top-level imports light; sklearn and cityscapesscripts are imported inside their tests)."""
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        pred, gt, bins = _random_batch(9, n=4, void_pred_frac=0.02)
        half = slice(2 * rank, 2 * rank + 2)
        acc = ExposureConfusion(num_classes=C)
        acc.update(pred[half], gt[half], bins[half])
        acc.all_reduce()
        if rank == 0:
            torch.save({"mat": acc.mat, "void": acc.void_pred, "n": acc.num_images}, out)
    finally:
        torch.distributed.destroy_process_group()


def _conf(pred, gt, bins) -> ExposureConfusion:
    acc = ExposureConfusion(num_classes=C)
    acc.update(pred, gt, bins)
    return acc


# ---------------------------------------------------------------- hand-worked 4x4 case
def test_hand_worked_4x4():
    R, S, B, X = 0, 1, 2, 255  # road, sidewalk, building, ignore (trainIds)
    gt = torch.tensor([[R, R, S, S],
                       [R, R, S, S],
                       [B, B, X, X],
                       [B, B, B, B]])
    pred = torch.tensor([[R, R, S, R],
                         [R, S, S, S],
                         [B, R, B, S],
                         [B, B, B, X]])   # the last pixel predicts "no class" (255)
    bins = torch.tensor([[0] * 4, [0] * 4, [9] * 4, [9] * 4])
    # Labelled pixels: 16 - 2 ignored = 14 (bin 0: 8, bin 9: 6); the two ignored
    # pixels' predictions (B, S) count nowhere.
    # bin 0 (rows 0-1): road gt 4, pred-as-road 4 ((0,0),(0,1),(0,3),(1,0)), TP 3;
    #                   sidewalk gt 4, pred-as-sidewalk 4 ((0,2),(1,1),(1,2),(1,3)), TP 3.
    # bin 9 (rows 2-3): building gt 6, pred-as-building 4, TP 4, one pixel -> road, one -> 255;
    #                   road gt 0, pred-as-road 1 ((2,1)).
    # Totals: road TP 3, FP 1 (bin 0) + 1 (bin 9) = 2, FN 1 -> IoU 3/6 = 0.5
    #         sidewalk TP 3, FP 1, FN 1 -> 3/5 = 0.6
    #         building TP 4, FP 0, FN 2 (road + 255) -> 4/6 = 2/3
    # mIoU = (1/2 + 3/5 + 2/3) / 3 = (45 + 54 + 60) / 270 = 53/90
    # pixel acc = (3 + 3 + 4) / 14 = 5/7
    # F1 = 2 TP / (gt + pred) per class:
    #   bin 0: road 6/8, sidewalk 6/8 -> weighted = macro = micro = 0.75
    #   bin 9: building 8/10 = 0.8, road 0/(0+1) = 0
    #          weighted (by gt: 6, 0) = 0.8; macro (road, building present) = 0.4;
    #          micro = 2*4 / (6 gt + 5 predicted as a class) = 8/11
    acc = ExposureConfusion(num_classes=C)
    acc.update(pred[None], gt[None], bins[None])
    expected_ef1 = {"weighted": (0.75, 0.8), "macro": (0.75, 0.4), "micro": (0.75, 8 / 11)}
    for avg, (e0, e9) in expected_ef1.items():
        m = acc.compute(average=avg)
        assert m["ef1_average"] == avg
        assert m["IoU"]["road"] == pytest.approx(0.5)
        assert m["IoU"]["sidewalk"] == pytest.approx(0.6)
        assert m["IoU"]["building"] == pytest.approx(2 / 3)
        assert all(m["IoU"][name] is None for name in labels.CLASS_NAMES[3:])
        assert m["mIoU"] == pytest.approx(53 / 90)
        assert m["pixel_acc"] == pytest.approx(5 / 7)
        assert m["EF1"][0] == pytest.approx(e0) and m["EF1"][9] == pytest.approx(e9)
        assert m["EF1"][1:9] == [None] * 8
        assert m["mEF1"] == pytest.approx((e0 + e9) / 2)
        assert m["num_pixels_per_bin"] == [8, 0, 0, 0, 0, 0, 0, 0, 0, 6]
        assert m["num_images"] == 1


# ---------------------------------------------------------------- torchmetrics IoU
def test_iou_matches_torchmetrics():
    from torchmetrics.classification import MulticlassJaccardIndex

    # classes 15..18 never appear: their IoU is undefined (None) and stays out of mIoU
    pred, gt, bins = _random_batch(1, classes=15)
    m = _conf(pred, gt, bins).compute()
    tm = MulticlassJaccardIndex(num_classes=C, average=None, ignore_index=255)
    ref = tm(pred, gt).numpy()
    ours = [m["IoU"][name] for name in labels.CLASS_NAMES]
    assert all(v is None for v in ours[15:])
    np.testing.assert_allclose(ours[:15], ref[:15], rtol=1e-6)
    assert m["mIoU"] == pytest.approx(float(ref[:15].mean()), rel=1e-6)


# ---------------------------------------------------------------- sklearn EF1
@pytest.mark.parametrize("average", AVERAGES)
@pytest.mark.parametrize("void_pred_frac", [0.0, 0.05])
def test_ef1_per_bin_matches_sklearn(average, void_pred_frac):
    from sklearn.metrics import f1_score

    pred, gt, bins = _random_batch(2, classes=12, void_pred_frac=void_pred_frac, empty_bins=(3, 7))
    m = _conf(pred, gt, bins).compute(average=average)
    p, g, b = pred.numpy().ravel(), gt.numpy().ravel(), bins.numpy().ravel()
    keep = g != 255
    p, g, b = p[keep], g[keep], b[keep]
    expected = []
    for k in range(NUM_BINS):
        sel = b == k
        if not sel.any():
            expected.append(None)
            continue
        yt, yp = g[sel], p[sel]
        # a 255 prediction is "no class": a miss for the gt class, a false positive of nothing,
        # i.e. sklearn restricted to the real classes present in the bin
        present = sorted(set(yt.tolist()) | (set(yp.tolist()) - {255}))
        expected.append(f1_score(yt, yp, labels=present, average=average, zero_division=0))
    assert m["EF1"][3] is None and m["EF1"][7] is None
    for ours, ref in zip(m["EF1"], expected, strict=True):
        assert (ours is None) == (ref is None)
        if ref is not None:
            assert ours == pytest.approx(ref, rel=1e-12)
    assert m["mEF1"] == pytest.approx(np.mean([v for v in expected if v is not None]), rel=1e-12)
    if void_pred_frac == 0.0:
        # without "no class" predictions, the plain sklearn call (labels from the data) agrees too
        for k in (0, 5, 9):
            sel = b == k
            assert m["EF1"][k] == pytest.approx(f1_score(g[sel], p[sel], average=average, zero_division=0))
            if average == "micro":  # micro F1 = accuracy of the bin
                assert m["EF1"][k] == pytest.approx(float((g[sel] == p[sel]).mean()))


def test_pixel_acc_and_ignore():
    pred, gt, bins = _random_batch(3, void_pred_frac=0.03)
    m = _conf(pred, gt, bins).compute()
    keep = gt != 255
    assert m["pixel_acc"] == pytest.approx(float((pred[keep] == gt[keep]).double().mean()))
    assert sum(m["num_pixels_per_bin"]) == int(keep.sum())
    assert m["num_images"] == 3


def test_dtypes_and_negative_predictions_count_alike():
    """uint8 inputs (int32 arithmetic) == int64 inputs; a -1 prediction is "no class" like 255."""
    pred, gt, bins = _random_batch(13, void_pred_frac=0.05)
    ref = _conf(pred, gt, bins)
    assert int(ref.void_pred.sum()) > 0
    small = _conf(pred.to(torch.uint8), gt.to(torch.uint8), bins.to(torch.uint8))
    neg = pred.clone()
    neg[pred == 255] = -1
    for other in (small, _conf(neg, gt, bins)):
        assert torch.equal(other.mat, ref.mat) and torch.equal(other.void_pred, ref.void_pred)


def test_all_ignored_gives_none_everywhere_and_is_json():
    pred, gt, bins = _random_batch(4)
    m = _conf(pred, torch.full_like(gt, 255), bins).compute()
    assert m["mIoU"] is None and m["mEF1"] is None and m["pixel_acc"] is None
    assert m["EF1"] == [None] * NUM_BINS
    json.dumps(m, allow_nan=False)


def test_values_are_plain_json_floats_in_unit_range():
    m = _conf(*_random_batch(5)).compute()
    text = json.dumps(m, allow_nan=False)
    back = json.loads(text)
    assert set(back) >= {"mIoU", "mEF1", "pixel_acc", "EF1", "IoU", "num_images", "num_pixels_per_bin",
                         "ef1_average"}
    values = [back["mIoU"], back["mEF1"], back["pixel_acc"], *back["EF1"], *back["IoU"].values()]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)


def test_bad_inputs_raise():
    pred, gt, bins = _random_batch(6)
    acc = ExposureConfusion()
    with pytest.raises(ValueError, match="same shape"):
        acc.update(pred[:, :5], gt, bins)
    bad = gt.clone()
    bad[0, 0, 0] = 40
    with pytest.raises(ValueError, match=r"\[40\]"):
        acc.update(pred, bad, bins)
    with pytest.raises(ValueError, match="bins"):
        acc.update(pred, gt, bins + 1)  # bin 10 does not exist
    with pytest.raises(ValueError, match="average"):
        acc.compute(average="samples")
    assert acc.num_images == 0 and int(acc.mat.sum()) == 0


# ---------------------------------------------------------------- accumulation
def test_merge_of_halves_equals_whole_and_reset():
    pred, gt, bins = _random_batch(7, n=4, void_pred_frac=0.02)
    whole = _conf(pred, gt, bins)
    a, b = _conf(pred[:2], gt[:2], bins[:2]), _conf(pred[2:], gt[2:], bins[2:])
    assert a.merge(b) is a
    assert torch.equal(a.mat, whole.mat) and torch.equal(a.void_pred, whole.void_pred)
    assert a.num_images == whole.num_images == 4
    assert a.compute() == whole.compute()
    # one image at a time (HxW) also adds up to the batch
    c = ExposureConfusion()
    for i in range(4):
        c.update(pred[i], gt[i], bins[i])
    assert torch.equal(c.mat, whole.mat) and c.num_images == 4
    c.reset()
    assert int(c.mat.sum()) == 0 and int(c.void_pred.sum()) == 0 and c.num_images == 0


def test_all_reduce_without_process_group_is_a_no_op():
    acc = _conf(*_random_batch(8))
    before = acc.mat.clone()
    acc.all_reduce()
    assert torch.equal(acc.mat, before) and acc.num_images == 3


@pytest.mark.torchrun
def test_all_reduce_over_two_gloo_ranks_equals_whole(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.pt"
    mp.spawn(_rank_worker, args=(2, f"file://{tmp_path / 'store'}", str(out)), nprocs=2, join=True)
    got = torch.load(out)
    whole = _conf(*_random_batch(9, n=4, void_pred_frac=0.02))
    assert torch.equal(got["mat"], whole.mat) and torch.equal(got["void"], whole.void_pred)
    assert got["n"] == 4


# ---------------------------------------------------------------- cityscapesscripts
def _label_ids_scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Blocky labelIds map (0..33): rectangles of classes, void ids included."""
    lab = np.full((h, w), 7, dtype=np.uint8)  # road
    ids = sorted(labels.VALID_LABEL_IDS)
    for _ in range(25):
        y, x = rng.integers(0, h), rng.integers(0, w)
        lab[y:y + rng.integers(4, h // 2), x:x + rng.integers(4, w // 2)] = rng.choice(ids)
    return lab


def test_miou_matches_cityscapesscripts(tmp_path, capsys):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs

    rng = np.random.default_rng(10)
    ids = np.array(sorted(labels.VALID_LABEL_IDS), dtype=np.uint8)
    gt_files, pred_files = [], []
    acc = ExposureConfusion()
    for i in range(4):
        gt = _label_ids_scene(rng, 64, 96)
        pred = gt.copy()
        noise = rng.random(gt.shape) < 0.25
        pred[noise] = rng.choice(ids, size=int(noise.sum()))  # includes void labelIds as predictions
        pred[10:20, 10:30] = _label_ids_scene(rng, 10, 20)    # a wrong block
        gt_files.append(str(tmp_path / f"gt_{i}_labelIds.png"))
        pred_files.append(str(tmp_path / f"pred_{i}.png"))
        cv2.imwrite(gt_files[-1], gt)
        cv2.imwrite(pred_files[-1], pred)
        bins = rng.integers(0, NUM_BINS, size=gt.shape)
        acc.update(torch.from_numpy(labels.to_train_ids(pred).astype(np.int64)),
                   torch.from_numpy(labels.to_train_ids(gt).astype(np.int64)), torch.from_numpy(bins))

    args = copy.copy(cs.args)
    args.evalInstLevelScore = False
    # its pixel-accuracy path calls np.in1d (gone in NumPy 2.4) and counts inverted masks;
    # pixel_acc is checked by hand in test_pixel_acc_and_ignore instead
    args.evalPixelAccuracy = False
    args.quiet = True
    args.JSONOutput = True
    args.exportFile = str(tmp_path / "cs_result.json")
    args.colorized = False
    result = cs.evaluateImgLists(pred_files, gt_files, args)
    capsys.readouterr()

    m = acc.compute()
    for name in labels.CLASS_NAMES:
        ref = result["classScores"][name]
        if math.isnan(ref):
            assert m["IoU"][name] is None, name
        else:
            assert m["IoU"][name] == pytest.approx(ref, rel=1e-12), name
    assert m["mIoU"] == pytest.approx(result["averageScoreClasses"], rel=1e-12)
    assert 0.2 < m["mIoU"] < 0.95  # a meaningful case, not all-perfect or all-wrong


# ---------------------------------------------------------------- outputs
def test_to_mlflow_names():
    m = _conf(*_random_batch(11, classes=10, empty_bins=(4,))).compute()
    flat = to_mlflow(m)
    assert flat["test_mIoU"] == m["mIoU"] and flat["test_mEF1"] == m["mEF1"]
    assert flat["test_pixel_acc"] == m["pixel_acc"]
    assert flat["test_EF1_bin0"] == m["EF1"][0] and "test_EF1_bin4" not in flat
    assert flat["test_IoU_traffic_light"] == m["IoU"]["traffic light"]
    assert "test_IoU_bicycle" not in flat  # class 18 absent: no IoU
    assert all(isinstance(v, float) for v in flat.values())
    assert set(to_mlflow(m, prefix="val_")) == {k.replace("test_", "val_", 1) for k in flat}


def test_format_table_shows_the_numbers():
    m = _conf(*_random_batch(12, empty_bins=(2,))).compute()
    text = format_table(m)
    assert f"{100 * m['mIoU']:.1f}" in text and f"{m['mEF1']:.4f}" in text
    assert all(name in text for name in BIN_NAMES)
    assert "traffic light" in text
    row = next(ln for ln in text.splitlines() if ln.startswith(BIN_NAMES[2]))
    assert row.split()[1] == "-"
