"""COCO evaluation: our wrapper equals pycocotools run directly; the GIoU variant; Darknet's COCO box rules."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pydarknet.eval.boxes import COCO_CATEGORY_IDS, coco_box, coco_image_id
from pydarknet.eval.coco import GIoUCOCOeval, coco_giou, coco_map_txt_row, evaluate_coco


def make_dataset(rng, images=12, categories=(1, 18, 90)):
    """A ground-truth file and noisy detections of it (some misses, some false positives, a crowd box)."""
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in categories]}
    results = []
    ann_id = 1
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id * 7, "width": 640, "height": 480, "file_name": f"{image_id}.jpg"})
        for _ in range(rng.integers(1, 5)):
            w, h = rng.uniform(8, 300), rng.uniform(8, 200)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            category = int(rng.choice(categories))
            gt["annotations"].append({"id": ann_id, "image_id": image_id * 7, "category_id": category,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(ann_id % 11 == 0)})
            ann_id += 1
            if rng.uniform() < 0.8:  # detected, with jitter
                jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
                results.append({"image_id": image_id * 7, "category_id": category,
                                "bbox": [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]),
                                         max(1.0, h + jitter[3])], "score": float(rng.uniform(0.05, 1))})
        for _ in range(rng.integers(0, 3)):  # false positives
            results.append({"image_id": image_id * 7, "category_id": int(rng.choice(categories)),
                            "bbox": [float(rng.uniform(0, 500)), float(rng.uniform(0, 300)), 50.0, 60.0],
                            "score": float(rng.uniform(0.01, 0.6))})
    return gt, results


def pycocotools_stats(gt_path, results_path):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(results_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.fixture
def dataset(tmp_path):
    gt, results = make_dataset(np.random.default_rng(7))
    gt_path, results_path = tmp_path / "gt.json", tmp_path / "coco_results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(results))
    return gt_path, results_path


def test_iou_metric_equals_pycocotools(dataset):
    gt_path, results_path = dataset
    ours = evaluate_coco(gt_path, results_path, "iou")
    np.testing.assert_array_equal(ours.stats, pycocotools_stats(gt_path, results_path))
    assert 0.2 < ours.ap < 1.0  # a meaningful, non-degenerate case
    lines = ours.summary.splitlines()
    assert len(lines) == 12
    assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]")


def test_giou_metric_is_stricter(dataset):
    gt_path, results_path = dataset
    iou = evaluate_coco(gt_path, results_path, "iou")
    giou = evaluate_coco(gt_path, results_path, "giou")
    assert giou.ap < iou.ap
    assert giou.ap50 <= iou.ap50 and giou.ap75 <= iou.ap75


def test_giou_equals_iou_for_exact_boxes(dataset):
    gt_path, _ = dataset
    gt = json.loads(gt_path.read_text())
    exact = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
             for a in gt["annotations"]]
    iou = evaluate_coco(gt_path, exact, "iou")
    giou = evaluate_coco(gt_path, exact, "giou")
    np.testing.assert_array_equal(iou.stats, giou.stats)


def test_giou_decides_a_borderline_match(tmp_path):
    # One 100x100 truth at (0,0); a 100x100 detection at (7.2,7.2): intersection 92.8^2 = 8611.84,
    # union 20000 - 8611.84 = 11388.16, IoU .7562; hull 107.2^2 = 11491.84, GIoU = .7562 - 103.68/11491.84
    # = .7472: a match at .75 by IoU only.
    gt = {"images": [{"id": 1, "width": 200, "height": 200}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000,
                           "iscrowd": 0}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    detection = [{"image_id": 1, "category_id": 1, "bbox": [7.2, 7.2, 100, 100], "score": 0.9}]
    assert evaluate_coco(path, detection, "iou").ap75 == pytest.approx(1.0)
    assert evaluate_coco(path, detection, "giou").ap75 == pytest.approx(0.0)
    assert evaluate_coco(path, detection, "giou").ap50 == pytest.approx(1.0)


def test_coco_giou_matrix():
    det = np.array([[0, 0, 10, 10], [20, 0, 10, 10]])
    truth = np.array([[5, 5, 10, 10], [0, 0, 10, 10]])
    matrix = coco_giou(det, truth, [0, 0])
    # det 0 vs truth 0: intersection 25, union 175, hull 15x15: 25/175 - 50/225.
    assert matrix[0, 0] == pytest.approx(25 / 175 - 50 / 225)
    assert matrix[0, 1] == pytest.approx(1.0)
    # det 1 vs truth 1: 10 px gap, hull 30x10 = 300, union 200: -1/3.
    assert matrix[1, 1] == pytest.approx(-1 / 3)
    # A crowd truth keeps COCO's crowd overlap (intersection / detection area): 25/100.
    assert coco_giou(det[:1], truth[:1], [1])[0, 0] == pytest.approx(0.25)


def test_giou_evaluator_only_for_boxes():
    with pytest.raises(ValueError, match="bounding boxes"):
        GIoUCOCOeval(iouType="segm")


def test_empty_results_evaluate_to_zero(dataset):
    gt_path, _ = dataset
    result = evaluate_coco(gt_path, [], "giou")
    assert result.ap == 0.0 and result.ap50 == 0.0


def test_image_ids_restrict_the_evaluation(dataset):
    gt_path, results_path = dataset
    results = json.loads(results_path.read_text())
    first = [r for r in results if r["image_id"] == 7]
    restricted = evaluate_coco(gt_path, first, "iou", image_ids=[7])
    everything = evaluate_coco(gt_path, first, "iou")
    assert restricted.ap > everything.ap  # the other images' truths count as misses only without restriction


def test_map_txt_row():
    class Fake:
        metric = "giou"
        ap, ap50, ap75 = 0.31234, 0.55, 0.3
    assert coco_map_txt_row(Fake, 4000) == "giou,4000,0.3123,0.5500,0,0,0,0,0.3000,0,0,0,0"


def test_darknet_coco_box_and_image_id():
    # Clip first (x to [0, 640]), then convert: (-5..15) -> (0..15): [0, 10, 15, 20].
    assert coco_box(5, 20, 20, 20, 640, 480) == (0.0, 10.0, 15.0, 20.0)
    assert coco_box(630, 470, 40, 40, 640, 480) == (610.0, 450.0, 30.0, 30.0)
    assert coco_image_id("/data/coco/images/val2017/000000397133.jpg") == 397133
    assert coco_image_id("COCO_val2014_000000000042.jpg") == 42
    with pytest.raises(ValueError, match="dog.jpg"):
        coco_image_id("dog.jpg")


def test_category_table():
    # The 80 Darknet classes use the 91-id scheme without the ids COCO never annotated.
    unused = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert list(COCO_CATEGORY_IDS) == [i for i in range(1, 91) if i not in unused]
