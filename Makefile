# pydarknet: builds csrc/ into pydarknet/libdarknet.so, and runs the demo and tests.
#   make            the library (CPU)
#   make GPU=1 [CUDNN=1] [CUDA_ARCH="sm_80 sm_90"] [LIBRARY=build/gpu/libdarknet.so]
#                   the library with CUDA (csrc/cuda/, nvcc from CUDA_HOME), which still runs on the CPU where
#                   there is no GPU or driver; cuBLAS/cuDNN from NVIDIA's wheels (pip install ".[cuda]") or CUDA_HOME.
#                   pip: GPU=1 [CUDNN=1] pip install --no-build-isolation ".[cuda]" (make reads them from the
#                   environment; without isolation the build sees the wheels installed beforehand)
#   make demo       install and run the main job (the built-in training default)
#   make test       install and run the test suite
#   make asan       the test suite against a library built with AddressSanitizer + UBSan
#   make fuzz       fuzz the cfg parser and the weights loader under the sanitizers (hypothesis, then libFuzzer)
#   make fuzz-c     the libFuzzer harnesses of tests/fuzz/ alone (clang); fuzz-coverage: their line coverage
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
HDR = $(wildcard csrc/*.h) $(wildcard csrc/cuda/*.h)
LIBRARY ?= pydarknet/libdarknet.so
LIB = $(LIBRARY)
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

# ---- CUDA ----
GPU ?= 0
CUDNN ?= 0
# Default: Turing to Hopper as machine code, plus compute_90 PTX (of the last arch listed) for newer GPUs.
CUDA_ARCH ?= sm_75 sm_80 sm_86 sm_89 sm_90
CUDA_SRC = $(wildcard csrc/cuda/*.cu)
CUDA_OBJDIR = build/obj/$(subst /,_,$(LIB))
GPU_CFLAGS =
GPU_OBJS =
GPU_LIBS =
ifeq ($(GPU),1)
  CUDA_HOME ?= $(or $(wildcard /usr/local/cuda),$(patsubst %/bin/nvcc,%,$(realpath $(shell command -v nvcc 2>/dev/null))))
  NVCC ?= $(CUDA_HOME)/bin/nvcc
  ifeq ($(wildcard $(NVCC)),)
    $(error GPU=1: nvcc not found at $(NVCC); set CUDA_HOME to a CUDA toolkit)
  endif
  LAST_ARCH = $(subst sm_,,$(lastword $(CUDA_ARCH)))
  GENCODE = $(foreach a,$(CUDA_ARCH),-gencode arch=compute_$(subst sm_,,$(a)),code=$(a)) \
            -gencode arch=compute_$(LAST_ARCH),code=compute_$(LAST_ARCH)
  # NVIDIA's wheels (nvidia-cublas, nvidia-cuda-runtime, nvidia-cudnn-cu13) when installed, else the toolkit's.
  NVIDIA_WHEELS := $(shell $(PYTHON) -c "import nvidia; print(list(nvidia.__path__)[0])" 2>/dev/null)
  ifneq ($(wildcard $(NVIDIA_WHEELS)/cu13/lib/libcublas.so.13),)
    # Only the cuBLAS/cuDNN headers come from the wheels (through links), so nvcc keeps its own runtime headers.
    CUDA_WHEEL_HEADERS = $(wildcard $(NVIDIA_WHEELS)/cu13/include/cublas*.h) \
                         $(if $(filter 1,$(CUDNN)),$(wildcard $(NVIDIA_WHEELS)/cudnn/include/cudnn*.h))
    CUDA_INC = -Ibuild/cuda-include
    CUDA_LIBDIRS = $(NVIDIA_WHEELS)/cu13/lib $(if $(filter 1,$(CUDNN)),$(NVIDIA_WHEELS)/cudnn/lib)
    # $ORIGIN/../nvidia/...: the wheels next to an installed package; _ffi.py also preloads them.
    GPU_LIBS = $(foreach d,$(CUDA_LIBDIRS),-L$(d) -Wl,-rpath,$(d)) \
               -Wl,-rpath,'$$ORIGIN/../nvidia/cu13/lib' -Wl,-rpath,'$$ORIGIN/../nvidia/cudnn/lib' \
               -l:libcudart.so.13 -l:libcublas.so.13 $(if $(filter 1,$(CUDNN)),-l:libcudnn.so.9)
  else ifneq ($(wildcard $(CUDA_HOME)/include/cublas_v2.h),)
    CUDA_WHEEL_HEADERS =
    CUDA_INC = -I$(CUDA_HOME)/include
    GPU_LIBS = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublas $(if $(filter 1,$(CUDNN)),-lcudnn)
  else
    $(error GPU=1: cuBLAS not found, neither NVIDIA's wheels for $(PYTHON) nor $(CUDA_HOME)/include/cublas_v2.h: \
      pip install ".[cuda]" (with pip install --no-build-isolation when pip builds the package) or set CUDA_HOME)
  endif
  GPU_LIBS += -lstdc++
  GPU_DEFS = -DDN_GPU $(if $(filter 1,$(CUDNN)),-DDN_CUDNN)
  GPU_CFLAGS = $(GPU_DEFS)
  NVCC_FLAGS = -O3 -std=c++17 $(GENCODE) $(GPU_DEFS) $(CUDA_INC) -DDN_CUDA_ARCHS='"$(CUDA_ARCH) +PTX compute_$(LAST_ARCH)"' \
               -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra,-Wno-unused-parameter
  GPU_OBJS = $(patsubst csrc/cuda/%.cu,$(CUDA_OBJDIR)/%.o,$(CUDA_SRC))
endif

# NCCL, the device transport of the data-parallel communicator (csrc/cuda/comm_nccl.cu; without DN_NCCL that file
# compiles to nothing). Needs GPU=1; NCCL from the nvidia-nccl-cu13 wheel or NCCL_HOME.
NCCL ?= 0
ifeq ($(NCCL),1)
  ifneq ($(GPU),1)
    $(error NCCL=1 needs GPU=1)
  endif
  NCCL_HOME ?= $(shell $(PYTHON) -c "import nvidia.nccl as m; print(list(m.__path__)[0])" 2>/dev/null)
  ifeq ($(wildcard $(NCCL_HOME)/include/nccl.h),)
    $(error NCCL=1: no nccl.h under NCCL_HOME='$(NCCL_HOME)' (pip install nvidia-nccl-cu13, or set NCCL_HOME))
  endif
  GPU_CFLAGS += -DDN_NCCL
  NVCC_FLAGS += -DDN_NCCL -I$(NCCL_HOME)/include
  # The wheel ships libnccl.so.2 only (no unversioned link name).
  GPU_LIBS += -L$(NCCL_HOME)/lib -l:libnccl.so.2 -Wl,-rpath,$(NCCL_HOME)/lib -Wl,-rpath,'$$ORIGIN/../nvidia/nccl/lib'
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

# The library is rebuilt whenever the build configuration changes (make GPU=1 after make, another CUDA_ARCH...).
BUILD_CONFIG = GPU=$(GPU) CUDNN=$(CUDNN) NCCL=$(NCCL) MPI=$(MPI_CFLAGS) CUDA_ARCH=$(CUDA_ARCH) CC=$(CC) OPT=$(OPT) BLAS=$(BLAS_CFLAGS) ONEDNN=$(ONEDNN_CFLAGS)
CONFIG_STAMP = build/config/$(subst /,_,$(LIB))
$(CONFIG_STAMP): FORCE
	@mkdir -p $(dir $@)
	@echo '$(BUILD_CONFIG)' | cmp -s - $@ || echo '$(BUILD_CONFIG)' > $@

build/cuda-include: FORCE
	@mkdir -p $@
	@$(if $(CUDA_WHEEL_HEADERS),ln -sf $(CUDA_WHEEL_HEADERS) $@/)

$(CUDA_OBJDIR)/%.o: csrc/cuda/%.cu $(HDR) Makefile $(CONFIG_STAMP) | build/cuda-include
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

.PHONY: all lib demo test asan fuzz fuzz-py fuzz-c fuzz-regress fuzz-coverage bench clean install FORCE
all: lib
lib: $(LIB)

$(LIB): $(SRC) $(HDR) Makefile $(CONFIG_STAMP) $(GPU_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) $(BLAS_CFLAGS) $(ONEDNN_CFLAGS) $(GPU_CFLAGS) $(MPI_CFLAGS) -shared -o $@ $(SRC) $(GPU_OBJS) \
	  $(BLAS_LIBS) $(ONEDNN_LIBS) $(GPU_LIBS) $(MPI_LIBS) -lm -lpthread

$(ASAN_LIB): $(SRC) $(HDR) Makefile
	@mkdir -p build/asan
	$(CC) $(CFLAGS_BASE) -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	  $(BLAS_CFLAGS) $(ONEDNN_CFLAGS) $(MPI_CFLAGS) -shared -o $@ $(SRC) $(BLAS_LIBS) $(ONEDNN_LIBS) $(MPI_LIBS) -lm -lpthread

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
fuzz: fuzz-py fuzz-c
fuzz-py: install $(ASAN_LIB)
	$(ASAN_ENV) PYDARKNET_FUZZ_SECONDS=$(FUZZ_SECONDS) $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_fuzz.py

# Coverage-guided fuzzing with libFuzzer under clang's AddressSanitizer (LeakSanitizer included) and UBSan,
# statically linked with the C core (portable BLAS, no OpenMP: one thread; the arithmetic loops are left out of
# the coverage feedback, see tests/fuzz/coverage_ignore.txt).
# Inputs found go to build/fuzz/corpus/; the committed seeds and regressions (tests/fuzz/) are read only.
# The harnesses write each input to a file under FUZZ_TMP (tmpfs: the cfg harness saves weights, with fsync).
# FUZZ_C_SECONDS per harness; FUZZ_C_ARGS adds libFuzzer flags (e.g. -runs=1000000 -jobs=2).
FUZZ_CC ?= clang
FUZZ_C_SECONDS ?= 60
FUZZ_C_ARGS ?=
FUZZ_DIR = build/fuzz
FUZZ_HARNESSES = cfg weights
FUZZ_CFLAGS = -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Wall -Wno-unused-parameter -Wno-unknown-pragmas
FUZZ_SANITIZE = -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-fsanitize-coverage-ignorelist=tests/fuzz/coverage_ignore.txt
FUZZ_COVERAGE = -fsanitize=fuzzer -fprofile-instr-generate -fcoverage-mapping
FUZZ_TMP ?= /dev/shm
FUZZ_RUN = -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/crash-
fuzz_corpus = $(FUZZ_DIR)/corpus/$(1) tests/fuzz/regressions/$(1) tests/fuzz/seeds/$(1) $(if $(filter cfg,$(1)),cfg)
fuzz_dict = $(if $(filter cfg,$(1)),-dict=tests/fuzz/cfg.dict -max_len=16384)
fuzz_run = TMPDIR=$(FUZZ_TMP) $(FUZZ_DIR)/fuzz_$(1) $(FUZZ_RUN) -max_total_time=$(FUZZ_C_SECONDS) $(call fuzz_dict,$(1)) \
	$(FUZZ_C_ARGS) $(call fuzz_corpus,$(1))
fuzz_replay = TMPDIR=$(FUZZ_TMP) LLVM_PROFILE_FILE=$(FUZZ_DIR)/$(1).profraw $(FUZZ_DIR)/coverage_$(1) -runs=0 \
	$(call fuzz_dict,$(1)) $(call fuzz_corpus,$(1))

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h tests/fuzz/coverage_ignore.txt $(SRC) $(HDR) Makefile
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SANITIZE) -o $@ $< $(SRC) -lm

$(FUZZ_DIR)/coverage_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h $(SRC) $(HDR) Makefile
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_COVERAGE) -o $@ $< $(SRC) -lm

# Every regression input once (each was a finding: it must now pass), then FUZZ_C_SECONDS of fuzzing each.
fuzz-regress: $(addprefix $(FUZZ_DIR)/fuzz_,$(FUZZ_HARNESSES))
	@for h in $(FUZZ_HARNESSES); do \
	  echo "== regressions: $$h"; TMPDIR=$(FUZZ_TMP) $(FUZZ_DIR)/fuzz_$$h tests/fuzz/regressions/$$h/* || exit 1; done

fuzz-c: fuzz-regress
	@for h in $(FUZZ_HARNESSES); do mkdir -p $(FUZZ_DIR)/corpus/$$h; done
	$(call fuzz_run,cfg)
	$(call fuzz_run,weights)

# Line coverage of the corpus (seeds, regressions and what fuzz-c found), per file of csrc/.
fuzz-coverage: $(addprefix $(FUZZ_DIR)/coverage_,$(FUZZ_HARNESSES))
	@for h in $(FUZZ_HARNESSES); do mkdir -p $(FUZZ_DIR)/corpus/$$h; rm -f $(FUZZ_DIR)/$$h.profraw; done
	$(call fuzz_replay,cfg)
	$(call fuzz_replay,weights)
	@for h in $(FUZZ_HARNESSES); do \
	  llvm-profdata merge -o $(FUZZ_DIR)/$$h.profdata $(FUZZ_DIR)/$$h.profraw && echo "== $$h harness" && \
	  llvm-cov report $(FUZZ_DIR)/coverage_$$h -instr-profile=$(FUZZ_DIR)/$$h.profdata $(SRC) || exit 1; done
	llvm-profdata merge -o $(FUZZ_DIR)/all.profdata $(addsuffix .profraw,$(addprefix $(FUZZ_DIR)/,$(FUZZ_HARNESSES)))
	@echo "== both harnesses"; llvm-cov report $(FUZZ_DIR)/coverage_cfg -object=$(FUZZ_DIR)/coverage_weights \
	  -instr-profile=$(FUZZ_DIR)/all.profdata $(SRC)

bench: install
	$(PYTHON) -m pydarknet bench

clean:
	rm -rf build $(LIB) *.egg-info
