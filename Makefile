# pydarknet: builds csrc/ into pydarknet/libdarknet.so (CPU), and runs the demo and tests.
#   make            the library
#   make demo       install and run the main job (the built-in training default)
#   make test       install and run the test suite
#   make asan       the test suite against a library built with AddressSanitizer + UBSan
#   make fuzz       fuzz the cfg parser and the weights loader under the sanitizers (hypothesis, then libFuzzer)
#   make fuzz-c     the libFuzzer harnesses of tests/fuzz/ alone (clang); fuzz-coverage: their line coverage
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

.PHONY: all lib demo test asan fuzz fuzz-py fuzz-c fuzz-regress fuzz-coverage bench clean install
all: lib
lib: $(LIB)

$(LIB): $(SRC) $(HDR) Makefile
	$(CC) $(CFLAGS_BASE) $(OPT) $(BLAS_CFLAGS) -shared -o $@ $(SRC) $(BLAS_LIBS) -lm

$(ASAN_LIB): $(SRC) $(HDR) Makefile
	@mkdir -p build/asan
	$(CC) $(CFLAGS_BASE) -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	  $(BLAS_CFLAGS) -shared -o $@ $(SRC) $(BLAS_LIBS) -lm

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
