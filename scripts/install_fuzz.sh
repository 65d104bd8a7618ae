#!/bin/sh
# Install what `make fuzz-c` needs: clang with libFuzzer and the sanitizer runtimes (Debian's clang and
# libclang-rt-dev), and llvm-profdata/llvm-cov for `make fuzz-coverage` (llvm). Does nothing when clang can
# already link a libFuzzer target. Needs root (or sudo).
set -eu

if command -v clang >/dev/null 2>&1 && command -v llvm-cov >/dev/null 2>&1 && \
   echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' | \
   clang -x c -fsanitize=fuzzer,address,undefined -o /dev/null - >/dev/null 2>&1; then
    echo "clang with libFuzzer already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install_fuzz.sh: run as root or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y clang libclang-rt-dev llvm
clang --version | head -1
