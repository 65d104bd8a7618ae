/* Errors, logging, allocation and random numbers. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char last_error[1024];

/* The log callback is the one process-wide setting: Python installs it once at import. */
static dn_log_fn log_callback;
static void *log_user;

DN_EXPORT int dn_abi_version(void) { return DN_ABI_VERSION; }

DN_EXPORT const char *dn_last_error(void) { return last_error; }

DN_EXPORT int dn_all_finite(const float *x, size_t n)
{
    enum { CHUNK = 65536 };
    const size_t chunks = (n + CHUNK - 1) / CHUNK;
    int ok = 1;
#pragma omp parallel for reduction(&& : ok) schedule(static) if (n >= 4 * CHUNK)
    for (size_t k = 0; k < chunks; k++) {
        const size_t start = k * CHUNK;
        ok = ok && dn_span_finite(x + start, n - start < CHUNK ? n - start : CHUNK);
    }
    return ok;
}

dn_status dn_fail(dn_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

DN_EXPORT void dn_set_log_callback(dn_log_fn fn, void *user)
{
    log_user = user;
    log_callback = fn;
}

void dn_log(int level, const char *fmt, ...)
{
    dn_log_fn fn = log_callback;
    if (!fn) return;
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    fn(level, message, log_user);
}

void *dn_calloc(size_t count, size_t size)
{
    if (count == 0 || size == 0) count = size = 1;
    if (count > SIZE_MAX / size) return NULL;
    return calloc(count, size);
}

/* splitmix64: tiny, good enough for weight initialisation, and reproducible across platforms. */
void dn_rng_seed(dn_rng *rng, uint64_t seed) { rng->state = seed; }

uint32_t dn_rng_next(dn_rng *rng)
{
    uint64_t z = (rng->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

float dn_rng_uniform(dn_rng *rng, float lo, float hi)
{
    return lo + (hi - lo) * (float)((dn_rng_next(rng) >> 8) * (1.0 / 16777216.0));
}
