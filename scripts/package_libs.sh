#!/usr/bin/env bash
# Usage: scripts/package_libs.sh [DEST]
#
# Copy libdarknet.so and the non-system shared libraries it needs (BLAS, CUDA, ...: as ldd resolves them,
# from the installed wheels (BLAS, oneDNN, NVIDIA's) when ldd cannot) into DEST (default: lib/ at the repository
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

# A pip build runs in a temporary environment, so its rpaths to the wheels it built against (scipy-openblas32,
# onednn-cpu-gomp) are gone afterwards (the package preloads those libraries at import instead): look in the
# installed wheels' library folders (and NVIDIA's, for a GPU build) for what ldd cannot find.
wheel_dirs=$(${PYTHON:-python3} - 2>/dev/null <<'PY' || true
import glob, os
dirs = []
try:
    import scipy_openblas32
    dirs.append(scipy_openblas32.get_lib_dir())
except ImportError:
    pass
try:
    from importlib import metadata
    dist = metadata.distribution("onednn-cpu-gomp")
    dirs += sorted({os.path.dirname(str(dist.locate_file(f))) for f in dist.files or () if f.name.startswith("libdnnl.so")})
except Exception:
    pass
try:
    import nvidia
    for base in nvidia.__path__:
        dirs += sorted(glob.glob(os.path.join(base, "*", "lib")))
except ImportError:
    pass
print("\n".join(dirs))
PY
)

find_in_wheels() {
    local d
    while IFS= read -r d; do
        [ -n "$d" ] && [ -f "$d/$1" ] && { echo "$d/$1"; return 0; }
    done <<DIRS
$wheel_dirs
DIRS
    return 1
}

missing=0
# ldd lines: "libfoo.so.1 => /path/libfoo.so.1 (0x...)", "libbar.so => not found", or the loader itself.
while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    if [ "$path" = "not" ]; then
        if found=$(find_in_wheels "$name"); then
            path=$found
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
