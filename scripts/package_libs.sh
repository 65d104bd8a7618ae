#!/usr/bin/env bash
# Usage: scripts/package_libs.sh [DEST]
#
# Copy libdarknet.so and the non-system shared libraries it needs (BLAS, CUDA, ...: as ldd resolves them,
# the BLAS from the scipy-openblas32 wheel when ldd cannot) into DEST (default: lib/ at the repository
# root), e.g. to put one build on a shared drive that cron jobs use with `--lib_folder DEST`.
# The library is taken from $PYDARKNET_LIBRARY if set, else pydarknet/.
# Libraries under /lib*, /usr/lib* are the system's and are not copied. With patchelf installed, the copy
# of libdarknet.so gets rpath $ORIGIN so it finds its neighbours; otherwise add DEST to LD_LIBRARY_PATH.
set -eu

usage() { sed -n '2,11s/^# \{0,1\}//p' "$0"; }
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then usage; exit 0; fi

root=$(cd "$(dirname "$0")/.." && pwd)
lib=${PYDARKNET_LIBRARY:-"$root/pydarknet/libdarknet.so"}
dest=${1:-"$root/lib"}

if [ ! -f "$lib" ]; then
    echo "package_libs.sh: $lib not found (run make, or set PYDARKNET_LIBRARY)" >&2; exit 1
fi
command -v ldd >/dev/null 2>&1 || { echo "package_libs.sh: ldd not found" >&2; exit 1; }

mkdir -p "$dest"
cp -f "$lib" "$dest/libdarknet.so"
echo "libdarknet.so <- $lib"

# A pip build runs in a temporary environment, so its rpath to the scipy-openblas32 wheel is gone afterwards
# (the package preloads the wheel's library at import instead): look there for what ldd cannot find.
wheel_dir=$(${PYTHON:-python3} -c "import scipy_openblas32 as s; print(s.get_lib_dir())" 2>/dev/null || true)

missing=0
# ldd lines: "libfoo.so.1 => /path/libfoo.so.1 (0x...)", "libbar.so => not found", or the loader itself.
while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    if [ "$path" = "not" ]; then
        if [ -n "$wheel_dir" ] && [ -f "$wheel_dir/$name" ]; then
            path=$wheel_dir/$name
        else
            echo "package_libs.sh: warning: $name not found by ldd" >&2; missing=1; continue
        fi
    fi
    case $path in
        /lib/*|/lib64/*|/usr/lib/*|/usr/lib64/*) continue ;;  # system libraries: present on every node
    esac
    cp -fL "$path" "$dest/$name"
    echo "$name <- $path"
done <<LDD
$(ldd "$lib")
LDD

if command -v patchelf >/dev/null 2>&1; then
    patchelf --set-rpath '$ORIGIN' "$dest/libdarknet.so"
else
    echo "note: patchelf not found; use LD_LIBRARY_PATH=$dest if libdarknet.so cannot find its libraries" >&2
fi
exit $missing
