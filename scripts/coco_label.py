#!/usr/bin/env python3
"""Convert COCO instances_*.json annotations to Darknet labels and an image list.

Writes <labels_dir>/<image name>.txt per image (one `class cx cy w h` line per object, relative to the
image size, class = the Darknet index 0..79 of the COCO category id; crowd regions and empty boxes skipped;
an image without objects gets an empty file) and the absolute image paths, one a line, to --list.
Default labels_dir: images_dir with its `images` folder replaced by `labels`, where Darknet looks.
"""
import argparse
import json
import sys
from pathlib import Path

# Category id (91-id scheme) of each Darknet COCO class, in coco.names order.
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
            32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
            58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87,
            88, 89, 90]


def default_labels_dir(images_dir):
    parts = list(Path(images_dir).resolve().parts)
    if "images" not in parts:
        raise SystemExit(f"error: {images_dir} has no 'images' folder in its path; pass --labels_dir")
    parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
    return Path(*parts)


def label_lines(image, annotations):
    width, height = image["width"], image["height"]
    lines = []
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        # Clip to the image: a few COCO boxes stick out by a fraction of a pixel.
        x1, y1 = max(0.0, x), max(0.0, y)
        x2, y2 = min(float(width), x + w), min(float(height), y + h)
        if ann.get("iscrowd", 0) or x2 <= x1 or y2 <= y1 or ann["category_id"] not in COCO_IDS:
            continue
        cx, cy = (x1 + x2) / 2.0 / width, (y1 + y2) / 2.0 / height
        lines.append(f"{COCO_IDS.index(ann['category_id'])} {cx:.6f} {cy:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, help="instances_<set>.json")
    parser.add_argument("--images_dir", required=True, help="folder of the set's images, e.g. coco/images/val2017")
    parser.add_argument("--labels_dir", default=None, help="output folder for label files (default: see above)")
    parser.add_argument("--list", required=True, help="image list to write, e.g. coco/val2017.txt")
    args = parser.parse_args(argv)
    with open(args.annotations) as f:
        dataset = json.load(f)
    images_dir = Path(args.images_dir).resolve()
    labels_dir = Path(args.labels_dir) if args.labels_dir else default_labels_dir(images_dir)
    labels_dir.mkdir(parents=True, exist_ok=True)
    by_image = {}
    for ann in dataset.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = sorted(dataset["images"], key=lambda image: image["file_name"])
    with open(args.list, "w") as listing:
        for image in images:
            lines = label_lines(image, by_image.get(image["id"], []))
            (labels_dir / (Path(image["file_name"]).stem + ".txt")).write_text("".join(l + "\n" for l in lines))
            listing.write(f"{images_dir / image['file_name']}\n")
    print(f"{args.list}: {len(images)} images, labels in {labels_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
