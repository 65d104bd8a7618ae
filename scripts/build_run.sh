#!/usr/bin/env bash
# Usage: scripts/build_run.sh SRC DST
#
# Start a new training run from an existing one: copy cfg/runs/SRC to cfg/runs/DST, replacing the run
# name SRC by DST in file names and file contents (so DST.data gets prefix=DST and its own backup folder).
# Set RUNS_DIR to use another runs folder. Portable: plain `sed` with redirection, no `sed -i`, so it works
# with GNU and BSD (macOS) sed alike.
set -eu

usage() { sed -n '2,8s/^# \{0,1\}//p' "$0"; }

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then usage; exit 0; fi
if [ $# -ne 2 ]; then usage >&2; exit 2; fi

src=$1
dst=$2
for name in "$src" "$dst"; do
    case $name in
        ''|*/*|.|..) echo "build_run.sh: invalid run name '$name'" >&2; exit 2 ;;
    esac
done

runs_dir=${RUNS_DIR:-"$(cd "$(dirname "$0")/.." && pwd)/cfg/runs"}
if [ ! -d "$runs_dir/$src" ]; then
    echo "build_run.sh: $runs_dir/$src: no such run" >&2; exit 1
fi
if [ -e "$runs_dir/$dst" ]; then
    echo "build_run.sh: $runs_dir/$dst already exists" >&2; exit 1
fi

# Escape the names for sed: SRC becomes a literal regex, DST a literal replacement.
src_re=$(printf '%s\n' "$src" | sed 's/[][\.*^$/]/\\&/g')
dst_re=$(printf '%s\n' "$dst" | sed 's/[\&/]/\\&/g')

tmp=$(mktemp -d "$runs_dir/.build_run.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$runs_dir/$src" && find . -type f) | while IFS= read -r rel; do
    rel=${rel#./}
    new_rel=$(printf '%s\n' "$rel" | sed "s/$src_re/$dst_re/g")
    mkdir -p "$tmp/$(dirname "$new_rel")"
    sed "s/$src_re/$dst_re/g" < "$runs_dir/$src/$rel" > "$tmp/$new_rel"
    echo "$src/$rel -> $dst/$new_rel"
done
mv "$tmp" "$runs_dir/$dst"
trap - EXIT
