"""Detection evaluation: VOC AP (IoU or GIoU matching), COCO via pycocotools, mAP of a detector on a list.

This package does not load the engine: ``voc`` and ``coco`` work on result files alone.
"""
from .boxes import COCO_CATEGORY_IDS, METRICS, coco_box, coco_image_id, overlaps, voc_box
from .coco import CocoResult, GIoUCOCOeval, coco_map_txt_row, evaluate_coco
from .listeval import evaluate_list
from .result import THRESHOLDS, MapResult, MetricMap, format_map_table, format_voc_report, map_txt_row
from .voc import VOC_CLASSES, evaluate_class, voc_ap, voc_eval

__all__ = [
    "COCO_CATEGORY_IDS",
    "METRICS",
    "THRESHOLDS",
    "VOC_CLASSES",
    "CocoResult",
    "GIoUCOCOeval",
    "MapResult",
    "MetricMap",
    "coco_box",
    "coco_image_id",
    "coco_map_txt_row",
    "evaluate_class",
    "evaluate_coco",
    "evaluate_list",
    "format_map_table",
    "format_voc_report",
    "map_txt_row",
    "overlaps",
    "voc_ap",
    "voc_box",
    "voc_eval",
]
