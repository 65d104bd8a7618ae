#!/usr/bin/env python3
"""COCO bbox evaluation of Darknet `valid` output (coco_results.json) with pycocotools: prints the 12
standard summary lines. --giou_metric runs the same evaluation with GIoU in place of IoU.
"""
import argparse
import sys
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", required=True, help="COCO annotations, e.g. instances_val2017.json")
    parser.add_argument("--results", required=True, help="coco_results.json written by valid")
    parser.add_argument("--giou_metric", action="store_true", help="match with GIoU instead of IoU")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    from pydarknet.eval.coco import evaluate_coco

    try:
        result = evaluate_coco(args.gt, args.results, "giou" if args.giou_metric else "iou")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
