"""VOC average precision: hand-checked cases of the VOC rules, GIoU vs IoU, the devkit file layout."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydarknet.eval.boxes import overlaps, voc_box
from pydarknet.eval.result import THRESHOLDS, MapResult, MetricMap, format_map_table, map_txt_row
from pydarknet.eval.voc import (
    Detections,
    ImageTruth,
    evaluate_class,
    evaluate_detections,
    load_voc_annotations,
    read_detections_file,
    use_07_metric_for_year,
    voc_ap,
    voc_eval,
    write_pr_curves,
)

BOX_A = [1, 1, 10, 10]      # 10x10 pixels with the +1 convention: area 100
BOX_B = [101, 101, 150, 150]


def truth(*images):
    """truth("img1": [(box, difficult), ...], ...) from keyword-free pairs."""
    result = {}
    for image_id, objects in images:
        result[image_id] = ImageTruth(np.array([o[0] for o in objects], dtype=float).reshape(-1, 4),
                                      np.array([o[1] for o in objects], dtype=bool))
    return result


def dets(*rows):
    return Detections.from_rows(rows)


def ap_at(curves, threshold=0.5, thresholds=THRESHOLDS):
    return curves[list(thresholds).index(threshold)].ap


# --- overlaps ----------------------------------------------------------------------------------------------

def test_iou_with_plus_one_convention():
    # [1,1,10,5] is 10x5 = 50 px inside the 100 px BOX_A: IoU = 50/100.
    assert overlaps([1, 1, 10, 5], np.array([BOX_A]), "iou")[0] == pytest.approx(0.5)
    # Offset by 5 in x and y: intersection 5x5 = 25, union 100 + 100 - 25 = 175.
    assert overlaps([6, 6, 15, 15], np.array([BOX_A]), "iou")[0] == pytest.approx(25 / 175)


def test_giou_hand_values():
    # Same offset box: hull 15x15 = 225, so GIoU = 25/175 - (225 - 175)/225 = 1/7 - 2/9.
    assert overlaps([6, 6, 15, 15], np.array([BOX_A]), "giou")[0] == pytest.approx(1 / 7 - 2 / 9)
    # Touching boxes: IoU 0, hull = union = 200, GIoU 0.
    assert overlaps([11, 1, 20, 10], np.array([BOX_A]), "giou")[0] == pytest.approx(0.0)
    # A gap of 10 px: hull 30x10 = 300, union 200: GIoU = -100/300.
    assert overlaps([21, 1, 30, 10], np.array([BOX_A]), "giou")[0] == pytest.approx(-1 / 3)
    # Nested box: the hull is the union, GIoU = IoU = 0.5.
    assert overlaps([1, 1, 10, 5], np.array([BOX_A]), "giou")[0] == pytest.approx(0.5)


coordinate = st.integers(min_value=1, max_value=200)


@st.composite
def voc_boxes(draw):
    x1, y1 = draw(coordinate), draw(coordinate)
    return [x1, y1, x1 + draw(st.integers(0, 100)), y1 + draw(st.integers(0, 100))]


@settings(max_examples=300, deadline=None)
@given(voc_boxes(), voc_boxes())
def test_giou_never_above_iou_and_equal_for_identical_boxes(a, b):
    iou = overlaps(a, np.array([b]), "iou")[0]
    giou = overlaps(a, np.array([b]), "giou")[0]
    assert -1.0 < giou <= iou + 1e-12
    assert overlaps(a, np.array([a]), "giou")[0] == pytest.approx(1.0)
    assert overlaps(a, np.array([a]), "iou")[0] == pytest.approx(1.0)


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match="diou"):
        overlaps(BOX_A, np.array([BOX_A]), "diou")


# --- voc_ap ------------------------------------------------------------------------------------------------

def test_voc_ap_area_and_11_point_differ():
    # One of two objects found by the only detection: recall 0.5, precision 1.
    # Area: precision 1 from recall 0 to .5, 0 beyond: AP = .5.
    assert voc_ap(np.array([0.5]), np.array([1.0])) == pytest.approx(0.5)
    # 11-point: recall >= t holds for t = 0, .1, ..., .5 (6 points of 11), precision 1 there: 6/11.
    assert voc_ap(np.array([0.5]), np.array([1.0]), use_07_metric=True) == pytest.approx(6 / 11)


def test_voc_ap_11_point_keeps_the_reference_grid():
    # The reference's np.arange grid holds 0.30000000000000004, so a recall of exactly 0.3 does not reach the
    # "0.3" point: only t = 0, .1, .2 count, 3/11 (a decimal grid would give 4/11).
    assert voc_ap(np.array([0.3]), np.array([1.0]), use_07_metric=True) == pytest.approx(3 / 11)


def test_year_selects_the_rule():
    assert use_07_metric_for_year(2007) and use_07_metric_for_year("2009")
    assert not use_07_metric_for_year(2010) and not use_07_metric_for_year("2012")


# --- matching rules ----------------------------------------------------------------------------------------

def test_all_correct_gives_ap_one():
    gt = truth(("a", [(BOX_A, False)]), ("b", [(BOX_B, False)]))
    curves = evaluate_class(dets(("a", 0.9, *BOX_A), ("b", 0.8, *BOX_B)), gt)
    assert all(curve.ap == pytest.approx(1.0) for curve in curves)
    curves_07 = evaluate_class(dets(("a", 0.9, *BOX_A), ("b", 0.8, *BOX_B)), gt, use_07_metric=True)
    assert all(curve.ap == pytest.approx(1.0) for curve in curves_07)


def test_a_missed_object():
    gt = truth(("a", [(BOX_A, False)]), ("b", [(BOX_B, False)]))
    curves = evaluate_class(dets(("a", 0.9, *BOX_A)), gt)
    # recall .5 at precision 1 (see test_voc_ap_area_and_11_point_differ): .5, and 6/11 by the 11-point rule.
    assert ap_at(curves) == pytest.approx(0.5)
    assert ap_at(evaluate_class(dets(("a", 0.9, *BOX_A)), gt, use_07_metric=True)) == pytest.approx(6 / 11)


def test_a_duplicate_detection_is_a_false_positive():
    gt = truth(("a", [(BOX_A, False)]), ("b", [(BOX_B, False)]))
    detections = dets(("a", 0.9, *BOX_A), ("a", 0.8, *BOX_A), ("b", 0.7, *BOX_B))
    # In score order: TP, FP (object a already matched), TP.
    # recall .5, .5, 1; precision 1, .5, 2/3. Precision envelope: 1 up to recall .5, 2/3 up to 1.
    # Area: .5*1 + .5*(2/3) = 5/6.
    assert ap_at(evaluate_class(detections, gt)) == pytest.approx(5 / 6)
    # 11-point: t = 0..0.5 (6 points) -> 1; t = .6..1.0 (5 points) -> 2/3: (6 + 10/3)/11 = 28/33.
    assert ap_at(evaluate_class(detections, gt, use_07_metric=True)) == pytest.approx(28 / 33)


def test_a_difficult_object_is_neither_needed_nor_penalised():
    difficult_gt = truth(("a", [(BOX_A, False), (BOX_B, True)]))
    # Detection on the difficult object (ignored) then on the normal one (TP): one positive, found, no FP.
    detections = dets(("a", 0.95, *BOX_B), ("a", 0.9, *BOX_A))
    assert ap_at(evaluate_class(detections, difficult_gt)) == pytest.approx(1.0)
    # Not detecting the difficult object does not lower recall either.
    assert ap_at(evaluate_class(dets(("a", 0.9, *BOX_A)), difficult_gt)) == pytest.approx(1.0)
    # Control: were it not difficult, missing it would halve the AP (recall .5 at precision 1).
    normal_gt = truth(("a", [(BOX_A, False), (BOX_B, False)]))
    assert ap_at(evaluate_class(dets(("a", 0.9, *BOX_A)), normal_gt)) == pytest.approx(0.5)


def test_a_weak_overlap_with_a_difficult_object_is_still_a_false_positive():
    gt = truth(("a", [(BOX_A, False), (BOX_B, True)]))
    # Best overlap is the difficult 50x50 box but only 25x25 = 625 px of a 4375 px union (1/7 < .5): a false
    # positive, ranked first. recall 0, 1; precision 0, .5 -> envelope .5 over recall 0..1: AP .5.
    detections = dets(("a", 0.95, 126, 126, 175, 175), ("a", 0.9, *BOX_A))
    assert ap_at(evaluate_class(detections, gt)) == pytest.approx(0.5)


def test_overlap_must_be_strictly_above_the_threshold():
    gt = truth(("a", [(BOX_A, False)]))
    exactly_half = dets(("a", 0.9, 1, 1, 10, 5))  # IoU exactly 0.5
    assert ap_at(evaluate_class(exactly_half, gt)) == 0.0
    just_above = dets(("a", 0.9, 1, 1, 10, 6))  # 60/100
    assert ap_at(evaluate_class(just_above, gt)) == pytest.approx(1.0)
    assert ap_at(evaluate_class(just_above, gt), 0.55) == pytest.approx(1.0)
    assert ap_at(evaluate_class(just_above, gt), 0.6) == 0.0


def test_only_the_best_overlapping_object_is_considered():
    # Two overlapping objects; the second detection overlaps object 1 best (already taken) and object 2
    # well enough: the VOC rule still calls it a false positive instead of falling back to object 2.
    gt = truth(("a", [([1, 1, 10, 10], False), ([3, 1, 12, 10], False)]))
    # First detection = object 1 (IoU 1; 80/120 with object 2). Second, [1,1,11,10] (110 px):
    # IoU 100/110 = .91 with object 1, 90/120 = .75 with object 2.
    detections = dets(("a", 0.9, 1, 1, 10, 10), ("a", 0.8, 1, 1, 11, 10))
    # TP then FP with 2 positives: recall .5, .5; precision 1, .5: AP .5 (a fallback would give 1).
    assert ap_at(evaluate_class(detections, gt)) == pytest.approx(0.5)


def test_giou_matching_is_stricter():
    gt = truth(("a", [(BOX_A, False)]))
    # [2,0,11,12]: 10x13 = 130 px; intersection 9x10 = 90, union 140, IoU .643; hull 11x13 = 143,
    # GIoU = .643 - 3/143 = .622.
    detections = dets(("a", 0.9, 2, 0, 11, 12))
    iou_curves = evaluate_class(detections, gt, metric="iou")
    giou_curves = evaluate_class(detections, gt, metric="giou")
    assert ap_at(iou_curves, 0.6) == 1.0 and ap_at(giou_curves, 0.6) == 1.0
    assert ap_at(iou_curves, 0.65) == 0.0 and ap_at(giou_curves, 0.65) == 0.0
    # between .622 and .643 the metrics disagree: no threshold there in .50:.95, so check with one.
    iou_at = evaluate_class(detections, gt, metric="iou", thresholds=(0.63,))[0].ap
    giou_at = evaluate_class(detections, gt, metric="giou", thresholds=(0.63,))[0].ap
    assert (iou_at, giou_at) == (1.0, 0.0)


@st.composite
def one_object_per_image(draw):
    images = draw(st.integers(1, 6))
    gt, rows = {}, []
    for i in range(images):
        box = draw(voc_boxes())
        gt[str(i)] = ImageTruth(np.array([box], dtype=float), np.array([False]))
        for _ in range(draw(st.integers(0, 3))):
            shift = draw(st.lists(st.integers(-15, 15), min_size=4, max_size=4))
            moved = [box[0] + shift[0], box[1] + shift[1], max(box[0] + shift[0], box[2] + shift[2]),
                     max(box[1] + shift[1], box[3] + shift[3])]
            rows.append((str(i), draw(st.floats(0.01, 1.0)), *moved))
    return gt, rows


@settings(max_examples=150, deadline=None)
@given(one_object_per_image())
def test_giou_map_never_above_iou_map_with_one_object_per_image(case):
    # With one object per image, any detection that matches under GIoU (<= IoU) also clears the threshold
    # under IoU, so IoU finds at least as many true positives at every rank.
    gt, rows = case
    detections = Detections.from_rows(rows)
    for rule in (False, True):
        iou = [c.ap for c in evaluate_class(detections, gt, metric="iou", use_07_metric=rule)]
        giou = [c.ap for c in evaluate_class(detections, gt, metric="giou", use_07_metric=rule)]
        assert all(g <= i + 1e-12 for g, i in zip(giou, iou))


def test_identical_boxes_give_equal_iou_and_giou_map():
    gt = truth(("a", [(BOX_A, False)]), ("b", [(BOX_B, False), ([30, 30, 60, 70], False)]))
    detections = dets(("a", 0.9, *BOX_A), ("b", 0.6, *BOX_B), ("b", 0.3, 200, 200, 220, 220))
    result = evaluate_detections({"x": detections}, {"x": gt}, ["x"], metrics=("iou", "giou"))
    np.testing.assert_array_equal(result["iou"].class_ap, result["giou"].class_ap)
    # Ranks: TP, TP, FP with 3 positives: recall 1/3, 2/3, 2/3, precision 1, 1, 2/3. Area: 2/3.
    assert result["iou"].mean == pytest.approx(2 / 3)


def test_detection_on_an_unknown_image_is_an_error():
    with pytest.raises(ValueError, match="'zzz'"):
        evaluate_class(dets(("zzz", 0.5, *BOX_A)), truth(("a", [(BOX_A, False)])))


def test_class_without_ground_truth_is_left_out_of_the_mean():
    gt_x = truth(("a", [(BOX_A, False)]), ("b", []))
    gt_y = truth(("a", []), ("b", []))
    result = evaluate_detections({"x": dets(("a", 0.9, *BOX_A)), "y": dets(("b", 0.5, *BOX_B))},
                                 {"x": gt_x, "y": gt_y}, ["x", "y"])
    assert math.isnan(result["iou"].ap_of("y"))
    assert result["iou"].mean == pytest.approx(1.0)


# --- result formatting -------------------------------------------------------------------------------------

def test_map_txt_row_and_table():
    class_ap = np.array([[0.8, 0.6]] * 5 + [[0.4, 0.2]] * 5)  # mAP .7 at .50-.70, .3 at .75-.95
    result = MapResult({"iou": MetricMap("iou", THRESHOLDS, ("p", "q"), class_ap),
                        "giou": MetricMap("giou", THRESHOLDS, ("p", "q"), class_ap / 2)})
    row = map_txt_row(result, "iou", 3000)
    assert row == "iou,3000,0.5000," + ",".join(["0.7000"] * 5 + ["0.3000"] * 5)
    assert map_txt_row(result, "giou", "final").startswith("giou,final,0.2500,0.3500,")
    table = format_map_table(result).splitlines()
    assert table[0].split() == ["metric", "mAP@.50", "mAP@.75", "mAP@.50:.95"]
    assert table[1].split() == ["iou", "0.7000", "0.3000", "0.5000"]
    assert table[2].split() == ["giou", "0.3500", "0.1500", "0.2500"]


def test_voc_box_darknet_arithmetic():
    # Centre (50, 40), 20x10 in a 100x60 image: corners 40..60, 35..45, shifted by +1.
    assert voc_box(50, 40, 20, 10, 100, 60) == (41.0, 36.0, 61.0, 46.0)
    # Clipped to 1 at the low end and to the image size (not size + 1) at the high end.
    assert voc_box(2, 58, 20, 10, 100, 60) == (1.0, 54.0, 13.0, 60.0)


# --- VOC devkit layout -------------------------------------------------------------------------------------

def write_xml(path, objects, size=(200, 200)):
    parts = [f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for name, box, difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox>"
                     f"<xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
                     "</bndbox></object>")
    path.write_text("".join(parts) + "</annotation>")


@pytest.fixture
def devkit(tmp_path):
    root = tmp_path / "VOCdevkit"
    voc = root / "VOC2012"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    write_xml(voc / "Annotations" / "img1.xml", [("cat", BOX_A, False), ("dog", BOX_B, False)])
    write_xml(voc / "Annotations" / "img2.xml", [("cat", BOX_B, False), ("dog", BOX_A, True)])
    write_xml(voc / "Annotations" / "img3.xml", [("dog", [20, 20, 60, 60], False)])
    (voc / "ImageSets" / "Main" / "test.txt").write_text("img1\nimg2\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("img3\n")
    return root


def test_voc_eval_on_devkit_files(devkit, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "comp4_det_test_cat.txt").write_text(
        "img1 0.900000 1.000000 1.000000 10.000000 10.000000\n"
        "img2 0.800000 101.000000 101.000000 150.000000 150.000000\n")
    # dog: a hit on img1, a detection on img2's difficult dog (ignored).
    (out / "comp4_det_test_dog.txt").write_text(
        "img1 0.7 101 101 150 150\nimg2 0.95 1 1 10 10\n")
    result = voc_eval(out, devkit, 2012, "test", ["cat", "dog"], metrics=("iou", "giou"), keep_curves=True)
    assert result.num_images == 2
    assert result["iou"].mean == pytest.approx(1.0)
    assert result["giou"].mean == pytest.approx(1.0)
    write_pr_curves(out, result["iou"])
    with open(out / "cat_pr.pkl", "rb") as f:
        curve = pickle.load(f)
    assert curve["ap"] == pytest.approx(1.0)
    np.testing.assert_allclose(curve["rec"], [0.5, 1.0])
    assert len(curve["aps"]) == len(THRESHOLDS)


def test_annotation_cache_is_keyed_by_image_set(devkit, tmp_path):
    test_set = load_voc_annotations(devkit, 2012, "test")
    val_set = load_voc_annotations(devkit, 2012, "val")
    assert sorted(test_set) == ["img1", "img2"] and sorted(val_set) == ["img3"]
    cache = devkit / "annotations_cache"
    assert sorted(p.name for p in cache.iterdir()) == ["annots_2012_test.pkl", "annots_2012_val.pkl"]
    # The cache is used (an XML edit is not seen) ...
    write_xml(devkit / "VOC2012" / "Annotations" / "img1.xml", [("cat", BOX_B, False)])
    assert load_voc_annotations(devkit, 2012, "test")["img1"][0]["bbox"] == [float(v) for v in BOX_A]
    # ... but a changed image set rebuilds it instead of returning stale entries.
    (devkit / "VOC2012" / "ImageSets" / "Main" / "test.txt").write_text("img1\nimg3\n")
    rebuilt = load_voc_annotations(devkit, 2012, "test")
    assert sorted(rebuilt) == ["img1", "img3"]
    assert rebuilt["img1"][0]["bbox"] == [float(v) for v in BOX_B]


def test_difficult_flag_and_missing_files(devkit):
    annotations = load_voc_annotations(devkit, 2012, "test")
    assert [o["difficult"] for o in annotations["img2"]] == [False, True]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_voc_annotations(devkit, 2012, "nope")


def test_malformed_detections_line_names_the_file(tmp_path):
    path = tmp_path / "comp4_det_test_cat.txt"
    path.write_text("img1 0.9 1 1 10 10\nimg2 0.5 1 1 10\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_cat.txt:2"):
        read_detections_file(path)


def naive_ap(detections, gt, threshold, metric, use_07_metric):
    """The VOC rules spelled out one threshold at a time, as a check of the vectorised matching."""
    npos = sum(int((~t.difficult).sum()) for t in gt.values())
    used = {k: [False] * len(t.boxes) for k, t in gt.items()}
    order = sorted(range(len(detections.scores)), key=lambda i: -detections.scores[i])
    tp, fp = [], []
    for i in order:
        t = gt[detections.image_ids[i]]
        hit = miss = 0
        if len(t.boxes):
            ov = overlaps(detections.boxes[i], t.boxes, metric)
            j = int(np.argmax(ov))
            if ov[j] > threshold:
                if t.difficult[j]:
                    pass
                elif not used[detections.image_ids[i]][j]:
                    used[detections.image_ids[i]][j] = True
                    hit = 1
                else:
                    miss = 1
            else:
                miss = 1
        else:
            miss = 1
        tp.append(hit)
        fp.append(miss)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return voc_ap(tp / npos, tp / np.maximum(tp + fp, 1e-300), use_07_metric)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_vectorised_matching_agrees_with_one_threshold_at_a_time(data):
    gt = {}
    rows = []
    for i in range(data.draw(st.integers(1, 4))):
        objects = data.draw(st.lists(st.tuples(voc_boxes(), st.booleans()), min_size=0, max_size=4))
        gt[str(i)] = ImageTruth(np.array([o[0] for o in objects], dtype=float).reshape(-1, 4),
                                np.array([o[1] for o in objects], dtype=bool))
        for box, _ in objects:
            for _ in range(data.draw(st.integers(0, 2))):
                s = data.draw(st.integers(-10, 10))
                rows.append((str(i), data.draw(st.floats(0.01, 1.0)), box[0] + s, box[1], box[2] + s, box[3] + 3))
    if not any((~t.difficult).any() for t in gt.values()):
        return
    detections = Detections.from_rows(rows)
    for metric in ("iou", "giou"):
        for rule in (False, True):
            curves = evaluate_class(detections, gt, metric=metric, use_07_metric=rule)
            for threshold, curve in zip(THRESHOLDS, curves):
                assert curve.ap == pytest.approx(naive_ap(detections, gt, threshold, metric, rule))
