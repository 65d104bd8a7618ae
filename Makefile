# pydarknet: builds csrc/ into pydarknet/libdarknet.so (CPU), and runs the demo and tests.
#   make            the library
#   make demo       install and run the main job (the built-in training default)
#   make test       install and run the test suite
#   make asan       the test suite against a library built with AddressSanitizer + UBSan
#   make fuzz       fuzz the cfg parser and the weights loader under the sanitizers
#   make bench      inference and training benchmarks against OpenCV DNN
#   make MPI=0|1    leave out / require the MPI transport of data-parallel training (default: built in when
#                   pkg-config or mpicc finds OpenMPI or MPICH)
#   make GPU=1 NCCL=1  add the NCCL transport (NCCL from the nvidia-nccl-cu13 wheel or $$NCCL_HOME)
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

# MPI, the host transport of the data-parallel communicator (csrc/comm_mpi.c). Without it the library builds and
# dn_comm_init_mpi reports how to get it, so `make` and `make test` work on machines without MPI.
MPI ?= auto
ifneq ($(MPI),0)
  MPI_PC := $(firstword $(foreach p,ompi-c mpich,$(shell pkg-config --exists $(p) 2>/dev/null && echo $(p))))
  ifneq ($(MPI_PC),)
    MPI_CFLAGS := -DDN_MPI $(shell pkg-config --cflags $(MPI_PC))
    MPI_LIBS := $(shell pkg-config --libs $(MPI_PC))
  else ifneq ($(shell mpicc --showme:link 2>/dev/null),)
    MPI_CFLAGS := -DDN_MPI $(shell mpicc --showme:compile)
    MPI_LIBS := $(shell mpicc --showme:link)
  else ifeq ($(MPI),1)
    $(error MPI=1 but neither pkg-config (ompi-c, mpich) nor mpicc finds MPI: install libopenmpi-dev or libmpich-dev)
  endif
endif

# NCCL, the device transport (csrc/cuda/comm_nccl.cu, host code only: nvcc or any C++ compiler builds it).
NCCL_OBJ =
ifeq ($(NCCL),1)
  ifneq ($(GPU),1)
    $(error NCCL=1 needs GPU=1)
  endif
  NCCL_HOME ?= $(shell $(PYTHON) -c "import nvidia.nccl as m; print(list(m.__path__)[0])" 2>/dev/null)
  CUDA_HOME ?= /usr/local/cuda
  ifeq ($(wildcard $(NCCL_HOME)/include/nccl.h),)
    $(error NCCL=1: no nccl.h under NCCL_HOME='$(NCCL_HOME)' (pip install nvidia-nccl-cu13, or set NCCL_HOME))
  endif
  NVCC ?= $(CUDA_HOME)/bin/nvcc
  NCCL_OBJ = build/nccl/comm_nccl.o
  MPI_CFLAGS += -DDN_NCCL
  # The wheel ships libnccl.so.2 only (no unversioned link name).
  MPI_LIBS += -L$(CUDA_HOME)/lib64 -lcudart -L$(NCCL_HOME)/lib -l:libnccl.so.2 -Wl,-rpath,$(NCCL_HOME)/lib \
              -Wl,-rpath,'$$ORIGIN/../nvidia/nccl/lib' -lstdc++
endif

build/nccl/comm_nccl.o: csrc/cuda/comm_nccl.cu csrc/comm.h csrc/darknet.h Makefile
	@mkdir -p build/nccl
	$(NVCC) -O2 -DDN_NCCL -Xcompiler -fPIC,-fvisibility=hidden -I$(NCCL_HOME)/include -c -o $@ $<

.PHONY: all lib demo test asan fuzz bench clean install
all: lib
lib: $(LIB)

$(LIB): $(SRC) $(HDR) $(NCCL_OBJ) Makefile
	$(CC) $(CFLAGS_BASE) $(OPT) $(BLAS_CFLAGS) $(MPI_CFLAGS) -shared -o $@ $(SRC) $(NCCL_OBJ) $(BLAS_LIBS) $(MPI_LIBS) -lm

$(ASAN_LIB): $(SRC) $(HDR) Makefile
	@mkdir -p build/asan
	$(CC) $(CFLAGS_BASE) -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	  $(BLAS_CFLAGS) $(MPI_CFLAGS) -shared -o $@ $(SRC) $(NCCL_OBJ) $(BLAS_LIBS) $(MPI_LIBS) -lm

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
