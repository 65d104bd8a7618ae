#!/usr/bin/env python3
"""Convert PASCAL VOC annotations to Darknet labels and image lists (as Darknet's voc_label.py).

For each (year, image set) of --sets it reads <voc_dir>/VOC<year>/ImageSets/Main/<set>.txt, writes
<voc_dir>/VOC<year>/labels/<id>.txt (one `class cx cy w h` line per object, relative to the image size;
difficult objects and classes outside the 20 VOC classes are skipped) and lists the absolute image paths
in <out_dir>/<year>_<set>.txt. Missing sets are skipped with a warning. Typical use, in the folder holding
VOCdevkit: `python3 voc_label.py`, then `cat 2007_train.txt 2007_val.txt 2012_*.txt > train.txt`.
"""
import argparse
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor"]
SETS = ["2012_train", "2012_val", "2007_train", "2007_val", "2007_test"]


def convert(size, box):
    """VOC (xmin, xmax, ymin, ymax), 1-based, -> relative (cx, cy, w, h), the reference's arithmetic."""
    dw, dh = 1.0 / size[0], 1.0 / size[1]
    x = (box[0] + box[1]) / 2.0 - 1
    y = (box[2] + box[3]) / 2.0 - 1
    w = box[1] - box[0]
    h = box[3] - box[2]
    return x * dw, y * dh, w * dw, h * dh


def convert_annotation(xml_path, label_path):
    root = ElementTree.parse(xml_path).getroot()
    size = root.find("size")
    width, height = int(float(size.find("width").text)), int(float(size.find("height").text))
    lines = []
    for obj in root.iter("object"):
        difficult = obj.find("difficult")
        name = obj.find("name").text.strip()
        if name not in CLASSES or (difficult is not None and int(float(difficult.text)) == 1):
            continue
        box = obj.find("bndbox")
        corners = [float(box.find(k).text) for k in ("xmin", "xmax", "ymin", "ymax")]
        lines.append(f"{CLASSES.index(name)} " + " ".join(str(v) for v in convert((width, height), corners)))
    Path(label_path).write_text("".join(line + "\n" for line in lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc_dir", default="VOCdevkit", help="VOCdevkit folder (default: %(default)s)")
    parser.add_argument("--out_dir", default=".", help="where <year>_<set>.txt go (default: %(default)s)")
    parser.add_argument("--sets", nargs="+", default=SETS, help="YEAR_SET items (default: %(default)s)")
    args = parser.parse_args(argv)
    voc_dir = Path(args.voc_dir).resolve()
    for item in args.sets:
        year, image_set = item.split("_", 1)
        root = voc_dir / f"VOC{year}"
        set_file = root / "ImageSets" / "Main" / f"{image_set}.txt"
        if not set_file.is_file():
            print(f"warning: {set_file} not found, skipping {item}", file=sys.stderr)
            continue
        (root / "labels").mkdir(exist_ok=True)
        image_ids = [line.split()[0] for line in set_file.read_text().splitlines() if line.strip()]
        with open(Path(args.out_dir) / f"{year}_{image_set}.txt", "w") as listing:
            for image_id in image_ids:
                listing.write(f"{root / 'JPEGImages' / image_id}.jpg\n")
                convert_annotation(root / "Annotations" / f"{image_id}.xml", root / "labels" / f"{image_id}.txt")
        print(f"{year}_{image_set}.txt: {len(image_ids)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
