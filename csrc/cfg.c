/* The .cfg reader (SPEC §1.1): sections of key=value lines, with every error naming file, line and key. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static char *dup_string(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static dn_status grow(void **items, int *cap, int need, size_t size)
{
    if (need <= *cap) return DN_OK;
    int ncap = *cap ? *cap * 2 : 8;
    while (ncap < need) ncap *= 2;
    void *p = realloc(*items, (size_t)ncap * size);
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory reading cfg");
    memset((char *)p + (size_t)*cap * size, 0, (size_t)(ncap - *cap) * size);
    *items = p;
    *cap = ncap;
    return DN_OK;
}

void cfg_free(cfg_file *cfg)
{
    if (!cfg) return;
    for (int i = 0; i < cfg->n_sections; i++) {
        cfg_section *s = &cfg->sections[i];
        for (int j = 0; j < s->n_options; j++) {
            free(s->options[j].key);
            free(s->options[j].value);
        }
        free(s->options);
        free(s->name);
    }
    free(cfg->sections);
    free(cfg->path);
    memset(cfg, 0, sizeof *cfg);
}

/* Removes every whitespace character, as Darknet's strip() does, so "a = b" reads as "a=b" and CRLF works. */
static size_t strip_whitespace(char *line)
{
    size_t o = 0;
    for (size_t i = 0; line[i]; i++)
        if (!isspace((unsigned char)line[i])) line[o++] = line[i];
    line[o] = 0;
    return o;
}

dn_status cfg_read(const char *path, cfg_file *out)
{
    memset(out, 0, sizeof *out);
    if (!path) return dn_fail(DN_E_ARG, "cfg path is NULL");
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        if (errno == ENOENT) return dn_fail(DN_E_NOTFOUND, "%s: cfg file not found", path);
        return dn_fail(DN_E_IO, "%s: cannot open cfg file: %s", path, strerror(errno));
    }
    dn_status st = DN_OK;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0;
    out->path = dup_string(path, strlen(path));
    if (!out->path) { st = dn_fail(DN_E_NOMEM, "out of memory"); goto fail; }

    while ((len = getline(&line, &cap, fp)) != -1) {
        lineno++;
        if ((size_t)len != strlen(line)) {
            st = dn_fail(DN_E_CFG, "%s:%d: line contains a NUL byte (is this a text cfg file?)", path, lineno);
            goto fail;
        }
        size_t n = strip_whitespace(line);
        if (n == 0 || line[0] == '#' || line[0] == ';') continue;
        if (line[0] == '[') {
            if (line[n - 1] != ']' || n < 3) {
                st = dn_fail(DN_E_CFG, "%s:%d: malformed section header '%s'", path, lineno, line);
                goto fail;
            }
            if ((st = grow((void **)&out->sections, &out->cap, out->n_sections + 1, sizeof(cfg_section)))) goto fail;
            cfg_section *s = &out->sections[out->n_sections++];
            s->name = dup_string(line + 1, n - 2);
            s->line = lineno;
            if (!s->name) { st = dn_fail(DN_E_NOMEM, "out of memory"); goto fail; }
            continue;
        }
        char *eq = strchr(line, '=');
        if (!eq || eq == line) {
            st = dn_fail(DN_E_CFG, "%s:%d: expected key=value or [section], got '%s'", path, lineno, line);
            goto fail;
        }
        if (out->n_sections == 0) {
            st = dn_fail(DN_E_CFG, "%s:%d: key '%.*s' appears before the first section ([net] must come first)",
                         path, lineno, (int)(eq - line), line);
            goto fail;
        }
        cfg_section *s = &out->sections[out->n_sections - 1];
        if ((st = grow((void **)&s->options, &s->cap, s->n_options + 1, sizeof(cfg_option)))) goto fail;
        cfg_option *o = &s->options[s->n_options++];
        o->key = dup_string(line, (size_t)(eq - line));
        o->value = dup_string(eq + 1, strlen(eq + 1));
        o->line = lineno;
        if (!o->key || !o->value) { st = dn_fail(DN_E_NOMEM, "out of memory"); goto fail; }
    }
    if (ferror(fp)) { st = dn_fail(DN_E_IO, "%s: read error", path); goto fail; }
    if (out->n_sections == 0) { st = dn_fail(DN_E_CFG, "%s: no sections (an empty cfg?)", path); goto fail; }
    free(line);
    fclose(fp);
    return DN_OK;
fail:
    free(line);
    fclose(fp);
    cfg_free(out);
    return st;
}

cfg_option *cfg_find(cfg_section *s, const char *key)
{
    /* The first occurrence wins when a key repeats. */
    for (int i = 0; i < s->n_options; i++) {
        if (strcmp(s->options[i].key, key) == 0) {
            s->options[i].used = 1;
            return &s->options[i];
        }
    }
    return NULL;
}

static dn_status missing(const cfg_file *f, const cfg_section *s, const char *key)
{
    return dn_fail(DN_E_CFG, "%s:%d: [%s] is missing the required key '%s'", f->path, s->line, s->name, key);
}

static int parse_int(const char *v, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < -2147483647L || x > 2147483647L) return 0;
    *out = (int)x;
    return 1;
}

static int parse_float(const char *v, float *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || !isfinite(x) || fabs(x) > 3.0e38) return 0;
    *out = (float)x;
    return 1;
}

dn_status cfg_get_int(const cfg_file *f, cfg_section *s, const char *key, int def, int required, int *out)
{
    cfg_option *o = cfg_find(s, key);
    if (!o) {
        if (required) return missing(f, s, key);
        *out = def;
        return DN_OK;
    }
    if (!parse_int(o->value, out)) {
        /* Darknet accepts "1.0" style integers in practice; take it when it is integral. */
        float x;
        if (parse_float(o->value, &x) && x > -2147483648.f && x < 2147483648.f && x == (float)(int)x) {
            *out = (int)x; /* (range checked first: converting an out-of-range float to int is undefined) */
            return DN_OK;
        }
        return dn_fail(DN_E_CFG, "%s:%d: [%s] key '%s': '%s' is not an integer", f->path, o->line, s->name, key,
                       o->value);
    }
    return DN_OK;
}

dn_status cfg_get_int_range(const cfg_file *f, cfg_section *s, const char *key, int def, int required, int lo,
                            int hi, int *out)
{
    dn_status st = cfg_get_int(f, s, key, def, required, out);
    if (st || (*out >= lo && *out <= hi)) return st;
    const cfg_option *o = cfg_find(s, key);
    return dn_fail(DN_E_CFG, "%s:%d: [%s] key '%s': %d out of range (%d..%d)", f->path, o ? o->line : s->line, s->name,
                   key, *out, lo, hi);
}

dn_status cfg_get_float(const cfg_file *f, cfg_section *s, const char *key, float def, int required, float *out)
{
    cfg_option *o = cfg_find(s, key);
    if (!o) {
        if (required) return missing(f, s, key);
        *out = def;
        return DN_OK;
    }
    if (!parse_float(o->value, out))
        return dn_fail(DN_E_CFG, "%s:%d: [%s] key '%s': '%s' is not a number", f->path, o->line, s->name, key,
                       o->value);
    return DN_OK;
}

const char *cfg_get_str(cfg_section *s, const char *key, const char *def)
{
    cfg_option *o = cfg_find(s, key);
    return o ? o->value : def;
}

/* Splits a comma list in place-free fashion; calls parse for each item. */
static dn_status get_list(const cfg_file *f, cfg_section *s, const char *key, void *out, int cap, int *count,
                          int is_float)
{
    *count = 0;
    cfg_option *o = cfg_find(s, key);
    if (!o) return DN_OK;
    const char *p = o->value;
    char item[64];
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n == 0 && !comma) break; /* a trailing comma */
        if (n == 0 || n >= sizeof item)
            return dn_fail(DN_E_CFG, "%s:%d: [%s] key '%s': malformed list '%s'", f->path, o->line, s->name, key,
                           o->value);
        if (*count >= cap)
            return dn_fail(DN_E_CFG, "%s:%d: [%s] key '%s': more than %d values", f->path, o->line, s->name, key,
                           cap);
        memcpy(item, p, n);
        item[n] = 0;
        int ok = is_float ? parse_float(item, (float *)out + *count) : parse_int(item, (int *)out + *count);
        if (!ok)
            return dn_fail(DN_E_CFG, "%s:%d: [%s] key '%s': '%s' is not a%s", f->path, o->line, s->name, key, item,
                           is_float ? " number" : "n integer");
        (*count)++;
        p += n + (comma ? 1 : 0);
    }
    return DN_OK;
}

dn_status cfg_get_int_list(const cfg_file *f, cfg_section *s, const char *key, int *out, int cap, int *count)
{
    return get_list(f, s, key, out, cap, count, 0);
}

dn_status cfg_get_float_list(const cfg_file *f, cfg_section *s, const char *key, float *out, int cap, int *count)
{
    return get_list(f, s, key, out, cap, count, 1);
}

void cfg_warn_unused(const cfg_file *f, const cfg_section *s)
{
    for (int i = 0; i < s->n_options; i++)
        if (!s->options[i].used)
            dn_log(DN_LOG_WARNING, "%s:%d: [%s] key '%s' is not used by this layer", f->path, s->options[i].line,
                   s->name, s->options[i].key);
}
