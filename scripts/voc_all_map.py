#!/usr/bin/env python3
"""Evaluate every new checkpoint of a weights folder on the VOC valid list, IoU and GIoU metrics.

Appends `metric,id,mean,m50,...,m95` rows to <weights_folder>/map.txt and writes <id>-<metric>.txt; already
evaluated checkpoints are skipped, so cron can run it every few minutes (see crontab.tmpl). A second run
that overlaps exits 0 at once. Exits 1 when an evaluation fails (e.g. a corrupt weights file).
"""
import argparse
import os
import sys
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_file", required=True, help=".data file (its valid list and names are used)")
    parser.add_argument("--cfg_file", required=True, help="network .cfg")
    parser.add_argument("--weights_folder", required=True, help="folder of <base>_<id>.weights checkpoints")
    parser.add_argument("--gpu_id", type=int, default=None, help="GPU index (default: the engine's default)")
    parser.add_argument("--min_weight_id", type=int, default=0, help="skip checkpoints with a smaller id")
    parser.add_argument("--lib_folder", default=None,
                        help="folder holding libdarknet.so (sets PYDARKNET_LIBRARY before it is loaded)")
    parser.add_argument("--max_runs", type=int, default=None, help="evaluate at most this many checkpoints")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # Before importing pydarknet: the library is located when the package loads.
    if args.lib_folder:
        os.environ["PYDARKNET_LIBRARY"] = str(Path(args.lib_folder).resolve() / "libdarknet.so")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    from pydarknet.allmap import run_all_map
    return run_all_map("voc", args.data_file, args.cfg_file, args.weights_folder, gpu_id=args.gpu_id,
                       min_weight_id=args.min_weight_id, max_runs=args.max_runs,
                       echo=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())
