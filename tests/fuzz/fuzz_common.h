/* Shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.c, built by `make fuzz-c`): the C core reads files by
 * path, so each input is written to a per-process file first. The harnesses see the internal structures
 * (internal.h) to check invariants the public API cannot show. */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../csrc/internal.h"

static inline void fuzz_quiet_log(int level, const char *message, void *user)
{
    (void)level; (void)message; (void)user;
}

static char *fuzz_paths[4];

static inline void fuzz_remove_files(void)
{
    for (int i = 0; i < 4; i++)
        if (fuzz_paths[i]) unlink(fuzz_paths[i]);
}

/* A file name of this process under $TMPDIR (or /tmp) for `what`, removed at exit; call once per name. */
static inline const char *fuzz_path(const char *what)
{
    int slot = 0;
    while (slot < 4 && fuzz_paths[slot]) slot++;
    char *path = malloc(512);
    if (slot == 4 || !path) abort();
    const char *dir = getenv("TMPDIR");
    snprintf(path, 512, "%s/pydarknet-fuzz-%s-%d", dir && *dir ? dir : "/tmp", what, (int)getpid());
    if (slot == 0) atexit(fuzz_remove_files);
    fuzz_paths[slot] = path;
    return path;
}

static inline void fuzz_write(const char *path, const uint8_t *data, size_t size)
{
    FILE *fp = fopen(path, "wb");
    if (!fp || (size && fwrite(data, 1, size, fp) != size) || fclose(fp) != 0) {
        fprintf(stderr, "fuzz harness: cannot write %s\n", path);
        abort();
    }
}

/* A harness bug or a broken invariant of the core: libFuzzer keeps the input that got here. */
#define FUZZ_CHECK(cond, ...)                                                                                   \
    do {                                                                                                        \
        if (!(cond)) {                                                                                          \
            fprintf(stderr, "invariant broken: %s: ", #cond);                                                 \
            fprintf(stderr, __VA_ARGS__);                                                                       \
            fprintf(stderr, "\n");                                                                              \
            abort();                                                                                            \
        }                                                                                                       \
    } while (0)

/* Deterministic input values in [0, 1) from a seed (the fuzz input), so a crash reproduces. */
static inline void fuzz_fill(float *x, size_t n, uint32_t seed)
{
    uint32_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 17; s ^= s << 5;
        x[i] = (float)(s >> 8) / 16777216.f;
    }
}

static inline uint32_t fuzz_hash(const uint8_t *data, size_t size)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < size; i++) h = (h ^ data[i]) * 16777619u;
    return h;
}

#endif
