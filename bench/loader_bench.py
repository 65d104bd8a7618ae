"""Training-loader throughput at 416x416 with full augmentation, for 0, 1 and 2 worker processes.

    python bench/loader_bench.py [--images N] [--batch B] [--batches K] [--size S]

Makes N VOC-sized (500x375) JPEGs with labels in a temp folder, then times K batches per setting after
one warm-up batch (worker start-up is not counted). Prints images/s.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import cv2
import numpy as np

from pydarknet.data import Augment, DataLoader


def make_images(folder: str, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "images"))
    os.makedirs(os.path.join(folder, "labels"))
    paths = []
    for i in range(count):
        # Smooth noise compresses like a photo rather than like white noise.
        small = rng.integers(0, 256, (24, 32, 3), np.uint8)
        image = cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
        path = os.path.join(folder, "images", f"{i:05d}.jpg")
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        with open(os.path.join(folder, "labels", f"{i:05d}.txt"), "w") as f:
            for _ in range(3):
                w, h = rng.uniform(0.1, 0.5, 2)
                f.write(f"{rng.integers(20)} {rng.uniform(w / 2, 1 - w / 2):.6f} "
                        f"{rng.uniform(h / 2, 1 - h / 2):.6f} {w:.6f} {h:.6f}\n")
        paths.append(path)
    return paths


def images_per_second(paths: list[str], workers: int, batch: int, batches: int, size: int) -> float:
    aug = Augment(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5, flip=True)
    with DataLoader(paths, num_classes=20, batch=batch, net_w=size, net_h=size, aug=aug,
                    workers=workers, seed=1) as loader:
        loader.next_batch()
        start = time.perf_counter()
        for _ in range(batches):
            loader.next_batch()
        return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--size", type=int, default=416)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = make_images(folder, args.images)
        print(f"loader at {args.size}x{args.size}, batch {args.batch}, 500x375 JPEGs, full augmentation "
              f"({os.cpu_count()} CPUs)")
        for workers in (0, 1, 2):
            rate = images_per_second(paths, workers, args.batch, args.batches, args.size)
            print(f"  workers={workers}: {rate:7.1f} images/s")


if __name__ == "__main__":
    main()
