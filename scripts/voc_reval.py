#!/usr/bin/env python3
"""VOC mAP of Darknet `valid` output (OUTPUT_DIR/comp4_det_test_<class>.txt) at IoU (or GIoU) thresholds
.50:.95, by the VOC devkit rules: 11-point AP for years before 2010, area under the curve otherwise,
difficult objects ignored. Prints `Threshold: 0.50 | mAP: 0.759` per threshold, then the mean, and writes
OUTPUT_DIR/<class>_pr.pkl. Layout: <voc_dir>/VOC<year>/Annotations/*.xml and ImageSets/Main/<image_set>.txt.
"""
import argparse
import sys
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="folder holding comp4_det_test_<class>.txt (valid's -prefix)")
    parser.add_argument("--voc_dir", default="VOCdevkit",
                        help="VOCdevkit folder (default: %(default)s, where voc_label.py and cfg/voc.data expect it)")
    parser.add_argument("--year", default="2007", help="VOC year (default: %(default)s)")
    parser.add_argument("--image_set", default="test", help="image set name (default: %(default)s)")
    parser.add_argument("--classes", default=None,
                        help="class names file, one per line (default: the 20 VOC classes)")
    parser.add_argument("--giou_metric", action="store_true", help="match with GIoU instead of IoU")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    from pydarknet.datafile import read_names
    from pydarknet.eval.result import format_voc_report
    from pydarknet.eval.voc import VOC_CLASSES, voc_eval, write_pr_curves

    classes = read_names(args.classes) if args.classes else list(VOC_CLASSES)
    metric = "giou" if args.giou_metric else "iou"
    try:
        result = voc_eval(args.output_dir, args.voc_dir, args.year, args.image_set, classes,
                          metrics=(metric,), keep_curves=True)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_pr_curves(args.output_dir, result[metric])
    print(format_voc_report(result[metric]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
