# dsc - build that explains itself.
#
#   make            libdsc.a, the dsc CLI, the test runner and the benchmarks
#   make test       build and run the test suite (ends with "N passed, N failed")
#   make demo       the main job: train a tiny DeepSeek-V3-style model on the
#                   bundled corpus, then generate from it (a few minutes)
#   make tour       info / logits / run on the bundled tiny fixture models
#   make SAN=1 ...  the same with AddressSanitizer + UBSan, in build-san/
#   NO_OMP=1        build without OpenMP      NO_BLAS=1  without OpenBLAS
#
# Flags are remembered in $(BUILD)/.make-settings; changing them rebuilds.

CC      ?= gcc
BUILD   ?= build
OPT     ?= -O2
CFLAGS  := -std=c11 $(OPT) -g -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter \
           -D_GNU_SOURCE -Iinclude -Isrc -MMD -MP
LDLIBS  := -lm -lpthread

ifeq ($(SAN),1)
  BUILD   := build-san
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
  LDFLAGS += -fsanitize=address,undefined
endif

# ---- dependencies: say what we found ----
ifeq ($(NO_OMP),1)
  $(info [dsc] OpenMP     : off (NO_OMP=1))
  CFLAGS += -Wno-unknown-pragmas
else
  CFLAGS += -fopenmp
  LDFLAGS += -fopenmp
  $(info [dsc] OpenMP     : on)
endif

JANSSON_CFLAGS := $(shell pkg-config --cflags jansson 2>/dev/null)
JANSSON_LIBS   := $(shell pkg-config --libs jansson 2>/dev/null)
ifeq ($(JANSSON_LIBS),)
  $(error [dsc] jansson not found: run scripts/install-deps.sh)
endif
$(info [dsc] jansson    : $(shell pkg-config --modversion jansson))
CFLAGS += $(JANSSON_CFLAGS)
LDLIBS += $(JANSSON_LIBS)

PCRE2_LIBS := $(shell pkg-config --libs libpcre2-8 2>/dev/null)
ifeq ($(PCRE2_LIBS),)
  $(error [dsc] PCRE2 not found: run scripts/install-deps.sh)
endif
$(info [dsc] PCRE2      : $(shell pkg-config --modversion libpcre2-8))
CFLAGS += $(shell pkg-config --cflags libpcre2-8)
LDLIBS += $(PCRE2_LIBS)

BLAS_SRC := src/kernels/cpu/gemm_builtin.c
ifneq ($(NO_BLAS),1)
  BLAS_LIBS := $(shell pkg-config --libs openblas 2>/dev/null)
  ifneq ($(BLAS_LIBS),)
    BLAS_SRC := src/kernels/cpu/gemm_openblas.c
    CFLAGS += $(shell pkg-config --cflags openblas)
    LDLIBS += $(BLAS_LIBS)
    $(info [dsc] BLAS       : OpenBLAS $(shell pkg-config --modversion openblas))
  else
    $(info [dsc] BLAS       : not found, built-in GEMM (run scripts/install-deps.sh))
  endif
else
  $(info [dsc] BLAS       : off (NO_BLAS=1), built-in GEMM)
endif
$(info [dsc] sanitizers : $(if $(filter 1,$(SAN)),ASan+UBSan,off))

# ---- sources ----
LIB_SRC := $(wildcard src/util/*.c src/io/*.c src/model/*.c src/kernels/ref/*.c \
                      src/tokenizer/*.c src/gen/*.c src/train/*.c src/nsa/*.c) \
           $(filter-out src/kernels/cpu/gemm_%.c,$(wildcard src/kernels/cpu/*.c)) $(BLAS_SRC)
TEST_SRC := $(wildcard tests/*.c tests/unit/*.c tests/kernels/*.c tests/e2e/*.c)
BENCH_SRC := $(wildcard bench/bench_*.c)
BENCH_COMMON := $(filter-out $(BENCH_SRC),$(wildcard bench/*.c))
BENCH_COMMON_OBJ := $(BENCH_COMMON:%.c=$(BUILD)/%.o)

LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ  := $(TEST_SRC:%.c=$(BUILD)/%.o)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

# SIMD variants are compiled per file; dispatch picks one at run time.
$(TEST_OBJ): CFLAGS += -Itests
$(BUILD)/src/kernels/cpu/avx2.o:   CFLAGS += -mavx2 -mfma -mf16c
$(BUILD)/src/kernels/cpu/avx512.o: CFLAGS += -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c
# the row loops of the training kernels and AdamW rely on the vectoriser (util.h)
$(BUILD)/src/train/tk.o:           CFLAGS += -O3
$(BUILD)/src/train/optim.o:        CFLAGS += -O3
$(BUILD)/src/nsa/nsa_fast.o:       CFLAGS += -O3
$(BUILD)/src/nsa/nsa_slc.o:        CFLAGS += -O3
$(BUILD)/src/nsa/nsa_decode_fast.o: CFLAGS += -O3
$(BUILD)/src/train/idx_target.o:   CFLAGS += -O3
$(BUILD)/src/train/idx_fast.o:     CFLAGS += -O3
$(BUILD)/src/train/tk_sparse.o:    CFLAGS += -O3

SETTINGS := CC=$(CC) OPT=$(OPT) SAN=$(SAN) NO_OMP=$(NO_OMP) NO_BLAS=$(NO_BLAS)

.PHONY: all test demo tour clean settings bench
all: $(BUILD)/libdsc.a $(BUILD)/dsc $(BUILD)/dsc_tests $(BENCH_BIN)

settings:
	@mkdir -p $(BUILD)
	@if [ "$$(cat $(BUILD)/.make-settings 2>/dev/null)" != "$(SETTINGS)" ]; then \
	  echo "[dsc] build settings changed: rebuilding $(BUILD)/"; \
	  rm -rf $(BUILD); mkdir -p $(BUILD); echo "$(SETTINGS)" > $(BUILD)/.make-settings; fi

$(BUILD)/.make-settings: settings

$(BUILD)/%.o: %.c | settings
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libdsc.a: $(LIB_OBJ)
	ar rcs $@ $^

CLI_SRC := $(wildcard cli/*.c)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)

$(BUILD)/dsc: $(CLI_OBJ) $(BUILD)/libdsc.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# the passkey training mix is the CLI's, unit-tested on its own
$(BUILD)/dsc_tests: $(TEST_OBJ) $(BUILD)/cli/passkey.o $(BUILD)/libdsc.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(BENCH_COMMON_OBJ) $(BUILD)/libdsc.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

bench: $(BENCH_BIN)

test: $(BUILD)/dsc $(BUILD)/dsc_tests
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} ./$(BUILD)/dsc_tests --dsc $(BUILD)/dsc

demo: $(BUILD)/dsc
	./scripts/train-demo.sh $(BUILD)/dsc

tour: $(BUILD)/dsc
	./scripts/demo.sh $(BUILD)/dsc

clean:
	rm -rf build build-san

# bench objects are not intermediates: keep them, and their dependency files,
# so a change to an internal header rebuilds the benchmarks that read it
.SECONDARY: $(BENCH_SRC:%.c=$(BUILD)/%.o) $(BENCH_COMMON_OBJ)
-include $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(BENCH_SRC:%.c=$(BUILD)/%.d) \
         $(BENCH_COMMON_OBJ:.o=.d)
