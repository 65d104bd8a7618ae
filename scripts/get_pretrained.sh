#!/usr/bin/env bash
# Usage: scripts/get_pretrained.sh [DEST]
#
# Download the published weights of the reference's six runs into DEST/backup/<run>/ under their published
# names, Darknet's darknet53.conv.74, yolov3.weights and yolov3-tiny.weights into DEST/backup/, and what the
# reference tests need into DEST/tests/data (yolov3-tiny.weights, Darknet's sample photos). DEST defaults to
# the repository. Each file is checked (a .weights file's header and size against its cfg, a photo by its
# SHA-256) before it takes its name; an interrupted download resumes on the next run, finished files are
# skipped. About 2.2 GB. Needs curl and a built pydarknet. PRETRAINED_MANIFEST=FILE replaces the list of
# files (tab-separated lines: URL DEST CHECK COPIES, as `python -m pydarknet.pretrained list` prints).
set -eu

usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then usage; exit 0; fi
if [ $# -gt 1 ]; then usage >&2; exit 2; fi

repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$repo}
python=${PYTHON:-python3}
command -v curl >/dev/null 2>&1 || { echo "get_pretrained.sh: need curl" >&2; exit 1; }

pretrained() { PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pydarknet.pretrained "$@"; }
check() { pretrained check "$1" "$2" >/dev/null; }  # 0 good, 3 incomplete, else bad (message on stderr)

if [ -n "${PRETRAINED_MANIFEST:-}" ]; then
    list=$(cat "$PRETRAINED_MANIFEST")
else
    list=$(pretrained list)
fi

failed=0
while IFS=$'\t' read -r url rel spec copies; do
    [ -n "$url" ] || continue
    target="$dest/$rel"
    part="$target.part"
    mkdir -p "$(dirname "$target")"
    if [ -f "$target" ]; then
        if check "$target" "$spec" 2>/dev/null; then
            echo "have $rel"
        else
            echo "$rel fails its check: fetching it again" >&2
            rm -f "$target"
        fi
    fi
    if [ ! -f "$target" ]; then
        rc=0
        check "$part" "$spec" 2>/dev/null || rc=$?   # a complete earlier download needs no request
        if [ ! -f "$part" ] || [ $rc -ne 0 ]; then
            echo "get $url -> $rel"
            if ! curl -fL --retry 3 -C - -o "$part" "$url"; then
                echo "get_pretrained.sh: $url: download interrupted; run again to resume $part" >&2
                failed=1
                continue
            fi
            rc=0
            check "$part" "$spec" || rc=$?
        fi
        case $rc in
            0) mv -f "$part" "$target" ;;
            3) echo "get_pretrained.sh: $part is incomplete; run again to resume" >&2; failed=1; continue ;;
            *) rm -f "$part"; echo "get_pretrained.sh: $url did not give $rel (removed)" >&2; failed=1; continue ;;
        esac
    fi
    if [ "$copies" != "-" ] && [ -n "$copies" ]; then
        for copy in $(printf '%s\n' "$copies" | tr ',' ' '); do
            cmp -s "$target" "$dest/$copy" && continue
            mkdir -p "$(dirname "$dest/$copy")"
            cp -f "$target" "$dest/$copy.tmp" && mv -f "$dest/$copy.tmp" "$dest/$copy"
            echo "placed $copy"
        done
    fi
done <<EOF
$list
EOF
exit $failed
