/* util.c - status strings, error messages, whole-file reads. */
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

const char *dsc_status_str(dsc_status s) {
    switch (s) {
    case DSC_OK: return "ok";
    case DSC_ERR_IO: return "I/O error";
    case DSC_ERR_FORMAT: return "format error";
    case DSC_ERR_CONFIG: return "config error";
    case DSC_ERR_UNSUPPORTED: return "unsupported";
    case DSC_ERR_SHAPE: return "shape error";
    case DSC_ERR_MISSING: return "missing or unexpected tensor";
    case DSC_ERR_ARG: return "bad argument";
    case DSC_ERR_OOM: return "out of memory";
    }
    return "unknown status";
}

const char *dsc_dtype_name(dsc_dtype t) {
    switch (t) {
    case DSC_F32: return "F32";
    case DSC_BF16: return "BF16";
    case DSC_F16: return "F16";
    case DSC_F8_E4M3: return "F8_E4M3";
    }
    return "?";
}

size_t dsc_dtype_size(dsc_dtype t) {
    switch (t) {
    case DSC_F32: return 4;
    case DSC_BF16: return 2;
    case DSC_F16: return 2;
    case DSC_F8_E4M3: return 1;
    }
    return 0;
}

dsc_status dsc_err_set(dsc_err *err, dsc_status code, const char *fmt, ...) {
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

dsc_status dsc_read_file(const char *path, char **out, size_t *len, dsc_err *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return dsc_err_set(err, DSC_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return dsc_err_set(err, DSC_ERR_IO, "%s: not a regular file", path);
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return dsc_err_set(err, DSC_ERR_IO, "%s: cannot seek", path);
    }
    long n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return dsc_err_set(err, DSC_ERR_IO, "%s: cannot size", path);
    }
    char *buf = malloc((size_t)n + 1);
    if (!buf) {
        fclose(f);
        return dsc_err_set(err, DSC_ERR_OOM, "%s: cannot allocate %ld bytes", path, n);
    }
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) {
        free(buf);
        return dsc_err_set(err, DSC_ERR_IO, "%s: short read (%zu of %ld bytes)", path, got, n);
    }
    buf[n] = '\0';
    *out = buf;
    if (len) *len = (size_t)n;
    return DSC_OK;
}
