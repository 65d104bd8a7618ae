#!/usr/bin/env python3
"""The GIoU paper's table from the published weights: evaluate every downloaded run (scripts/get_pretrained.sh
puts them in backup/<run>/) on VOC 2007 test or COCO val with the IoU and the GIoU metric, and print the
reference's published figures beside the measured ones. Runs without weights are listed as such.

Each run's cfg and .data are cfg/runs/<run>/; --cfg RUN=PATH and --data RUN=PATH replace them (e.g. to point
the valid list elsewhere). --limit N evaluates only the first N images of each valid list.
"""
import argparse
import sys
from pathlib import Path


def pairs(values, option):
    out = {}
    for value in values or []:
        run, sep, path = value.partition("=")
        if not sep:
            raise SystemExit(f"error: {option} takes RUN=PATH, got {value!r}")
        out[run] = path
    return out


def main(argv=None):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    from pydarknet.paper import HEADER, paper_table
    from pydarknet.pretrained import RUNS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backup", default="backup", help="folder holding <run>/<published weights> (backup)")
    parser.add_argument("--runs", help="comma-separated runs (default: all six): " + ", ".join(r.name for r in RUNS))
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of each set")
    parser.add_argument("--coco_gt", default="data/coco/annotations/instances_val2017.json",
                        help="COCO val annotations (default: where get_2017_coco_dataset.sh puts them)")
    parser.add_argument("--cfg", action="append", metavar="RUN=PATH", help="use this cfg for RUN")
    parser.add_argument("--data", action="append", metavar="RUN=PATH", help="use this .data for RUN")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    names = {r.name for r in RUNS}
    runs = args.runs.split(",") if args.runs else None
    for name in (runs or []) + list(pairs(args.cfg, "--cfg")) + list(pairs(args.data, "--data")):
        if name not in names:
            parser.error(f"unknown run {name!r}; runs: {', '.join(sorted(names))}")
    print(HEADER, flush=True)
    rows = paper_table(args.backup, runs=runs, limit=args.limit, coco_gt=args.coco_gt, cfgs=pairs(args.cfg, "--cfg"),
                       datas=pairs(args.data, "--data"), threads=args.threads,
                       echo=lambda line: print(line, flush=True))
    return 1 if any(row.note.startswith("error") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
