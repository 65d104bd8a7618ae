# pydarknet: builds csrc/ into pydarknet/libdarknet.so (CPU), and runs the demo and tests.
#   make            the library
#   make demo       install and run the main job (the built-in training default)
#   make test       install and run the test suite
#   make asan       the test suite against a library built with AddressSanitizer + UBSan
#   make fuzz       fuzz the cfg parser and the weights loader under the sanitizers
#   make bench      inference and training benchmarks against OpenCV DNN
PYTHON ?= python3
CC ?= cc
OPT ?= -O3
# -fno-trapping-math lets gcc turn float selects (leaky, relu, maxpool) into vector code; results are unchanged
# (no reassociation), it only assumes floating-point traps are off, as they always are here.
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -fPIC -fvisibility=hidden -fopenmp -fno-trapping-math -Wall -Wextra -Wno-unused-parameter
SRC = $(wildcard csrc/*.c)
HDR = $(wildcard csrc/*.h)
LIB = pydarknet/libdarknet.so
ASAN_LIB = build/asan/libdarknet.so

# BLAS: the scipy-openblas32 wheel (symbols prefixed scipy_), else a system OpenBLAS, else portable C.
SCIPY_OPENBLAS := $(shell $(PYTHON) -c "import scipy_openblas32 as s; print(s.get_lib_dir())" 2>/dev/null)
ifneq ($(SCIPY_OPENBLAS),)
  BLAS_CFLAGS = -DDN_BLAS_SCIPY -I$(shell $(PYTHON) -c "import scipy_openblas32 as s; print(s.get_include_dir())")
  # $ORIGIN/../scipy_openblas32/lib finds the wheel next to an installed package; _ffi.py also preloads it.
  BLAS_LIBS = -L$(SCIPY_OPENBLAS) -lscipy_openblas -Wl,-rpath,'$$ORIGIN/../scipy_openblas32/lib' -Wl,-rpath,$(SCIPY_OPENBLAS)
else ifneq ($(wildcard /usr/include/x86_64-linux-gnu/cblas.h /usr/include/openblas/cblas.h /usr/include/cblas.h),)
  BLAS_CFLAGS = -DDN_BLAS_OPENBLAS $(shell pkg-config --cflags openblas 2>/dev/null)
  BLAS_LIBS = $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
else
  BLAS_CFLAGS =
  BLAS_LIBS =
endif

# oneDNN (convolutions at inference, bf16): the onednn-cpu-gomp + onednn-devel-cpu-gomp wheels (their files land
# under the Python prefix), else a system libdnnl-dev, else none (the hand-written path only; a warning says so).
ONEDNN_PREFIX := $(shell $(PYTHON) -c "import importlib.metadata as m, pathlib; d = m.distribution('onednn-cpu-gomp'); f = next(p for p in d.files if p.name.startswith('libdnnl.so')); print(pathlib.Path(d.locate_file(f)).resolve().parent.parent)" 2>/dev/null)
ifneq ($(and $(ONEDNN_PREFIX),$(wildcard $(ONEDNN_PREFIX)/include/oneapi/dnnl/dnnl.h)),)
  # The rpath finds the wheel where it was at build time; _ffi.py preloads it wherever it is installed.
  ONEDNN_CFLAGS = -DDN_ONEDNN -I$(ONEDNN_PREFIX)/include
  ONEDNN_LIBS = -L$(ONEDNN_PREFIX)/lib -l:libdnnl.so.3 -Wl,-rpath,$(ONEDNN_PREFIX)/lib
else ifneq ($(shell grep -s 'define DNNL_VERSION_MAJOR 3' /usr/include/oneapi/dnnl/dnnl_version.h),)
  # Debian's libdnnl-dev, when it has oneDNN 3's C API (2.x's differs)
  ONEDNN_CFLAGS = -DDN_ONEDNN
  ONEDNN_LIBS = -ldnnl
else
  $(warning oneDNN not found (pip install onednn-cpu-gomp onednn-devel-cpu-gomp): building without it)
  ONEDNN_CFLAGS =
  ONEDNN_LIBS =
endif

.PHONY: all lib demo test asan fuzz bench clean install
all: lib
lib: $(LIB)

$(LIB): $(SRC) $(HDR) Makefile
	$(CC) $(CFLAGS_BASE) $(OPT) $(BLAS_CFLAGS) $(ONEDNN_CFLAGS) -shared -o $@ $(SRC) $(BLAS_LIBS) $(ONEDNN_LIBS) -lm

$(ASAN_LIB): $(SRC) $(HDR) Makefile
	@mkdir -p build/asan
	$(CC) $(CFLAGS_BASE) -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	  $(BLAS_CFLAGS) $(ONEDNN_CFLAGS) -shared -o $@ $(SRC) $(BLAS_LIBS) $(ONEDNN_LIBS) -lm

install:
	$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	$(PYTHON) -m pydarknet train

test: install
	$(PYTHON) -m pytest -q tests

# Python is not built with ASan, so the runtime is preloaded (the browser tests are left out: chromedriver would
# inherit the preload and abort); leak checking is off because CPython's own
# allocations are reported as leaks (LeakSanitizer finds nothing in a non-instrumented interpreter's use).
ASAN_ENV = PYDARKNET_LIBRARY=$(abspath $(ASAN_LIB)) LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

asan: install $(ASAN_LIB)
	$(ASAN_ENV) $(PYTHON) -m pytest -q -x -p no:cacheprovider tests -m "not slow and not browser"

FUZZ_SECONDS ?= 300
fuzz: install $(ASAN_LIB)
	$(ASAN_ENV) PYDARKNET_FUZZ_SECONDS=$(FUZZ_SECONDS) $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_fuzz.py

bench: install
	$(PYTHON) -m pydarknet bench

clean:
	rm -rf build $(LIB) *.egg-info
