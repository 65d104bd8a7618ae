#!/usr/bin/env bash
# Usage: scripts/get_2017_coco_dataset.sh [DEST]
#
# Download COCO 2017 (train and val images, instance annotations) into DEST (default: data/coco), unpack
# it as DEST/images/{train2017,val2017} and DEST/annotations, then write Darknet labels
# (DEST/labels/{train2017,val2017}/*.txt) and the lists DEST/train2017.txt and DEST/val2017.txt with
# scripts/coco_label.py. Uses curl or wget; downloads resume, and finished steps are skipped on a rerun.
# About 19 GB to download, 40 GB free space needed while unpacking.
set -eu

usage() { sed -n '2,9s/^# \{0,1\}//p' "$0"; }
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then usage; exit 0; fi

here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-data/coco}
base=http://images.cocodataset.org
python=${PYTHON:-python3}

fetch() {  # fetch URL FILE, resuming a partial download
    if command -v curl >/dev/null 2>&1; then
        curl -fL -C - -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -c -O "$2" "$1"
    else
        echo "get_2017_coco_dataset.sh: need curl or wget" >&2; exit 1
    fi
}
command -v unzip >/dev/null 2>&1 || { echo "get_2017_coco_dataset.sh: need unzip" >&2; exit 1; }

mkdir -p "$dest/images" "$dest/downloads"
for archive in zips/train2017.zip zips/val2017.zip annotations/annotations_trainval2017.zip; do
    file="$dest/downloads/$(basename "$archive")"
    stamp="$file.unpacked"
    [ -f "$stamp" ] && continue
    fetch "$base/$archive" "$file"
    case $archive in
        zips/*) unzip -q -o "$file" -d "$dest/images" ;;
        *) unzip -q -o "$file" -d "$dest" ;;
    esac
    touch "$stamp"
done

for set in train2017 val2017; do
    "$python" "$here/coco_label.py" --annotations "$dest/annotations/instances_$set.json" \
        --images_dir "$dest/images/$set" --labels_dir "$dest/labels/$set" --list "$dest/$set.txt"
done
echo "done: use train=$dest/train2017.txt and valid=$dest/val2017.txt in your .data file"
