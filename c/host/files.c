/*
 * files.c -- the host's services (host.h): errors that print and exit, files read whole, memory
 * that fails with a message, a clock.
 */
#define _POSIX_C_SOURCE 200809L     /* stat, opendir, rmdir, clock_gettime */

#include "host.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

const char *fpgai_tmp_path;         /* a partial output file or dump folder to delete on error */

#ifdef FPGAI_FUZZ
/* Fuzzing build (c/fuzz/): a harness that sets fpgai_fuzz_jmp gets every error as a longjmp
 * instead of exit(1), the message in fuzz_msg (not printed: speed). */
jmp_buf *fpgai_fuzz_jmp;
static char fuzz_msg[512];
#endif

void fail(const char *fmt, ...)
{
    va_list ap;
#ifdef FPGAI_FUZZ
    if (fpgai_fuzz_jmp) {
        va_start(ap, fmt);
        vsnprintf(fuzz_msg, sizeof fuzz_msg, fmt, ap);
        va_end(ap);
        longjmp(*fpgai_fuzz_jmp, 1);
    }
#endif
    fputs("error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (fpgai_tmp_path)
        remove_path(fpgai_tmp_path);
    exit(1);
}

void remove_path(const char *path)
{
    if (remove(path) == 0)
        return;
    DIR *d = opendir(path);
    if (!d)
        return;
    char file[8192];
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        int n = snprintf(file, sizeof file, "%s/%s", path, e->d_name);
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && n > 0 && (size_t)n < sizeof file)
            remove(file);
    }
    closedir(d);
    rmdir(path);
}

double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void *xmalloc(size_t n, const char *what)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        fail("out of memory allocating %zu bytes for %s", n, what);
    return p;
}

void *xcalloc(size_t count, size_t size, const char *what)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        fail("out of memory allocating %zu x %zu bytes for %s", count, size, what);
    return p;
}

uint32_t rd_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Size of a regular file, or fail. */
size_t file_size(const char *path, size_t max_size)
{
    struct stat st;
    if (stat(path, &st) != 0)
        fail("%s: cannot open (%s)", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        fail("%s: not a regular file", path);
    if (st.st_size < 0 || (uint64_t)st.st_size > max_size)
        fail("%s: %lld bytes, larger than the %zu-byte limit", path, (long long)st.st_size, max_size);
    return (size_t)st.st_size;
}

/* Read a whole regular file (at most max_size bytes) into a new buffer, NUL-terminated. */
uint8_t *read_file(const char *path, size_t max_size, size_t *size_out)
{
    size_t size = file_size(path, max_size);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail("%s: cannot open (%s)", path, strerror(errno));
    uint8_t *buf = malloc(size + 1);
    if (!buf) {
        fclose(f);
        fail("out of memory allocating %zu bytes for %s", size + 1, path);
    }
    size_t got = fread(buf, 1, size, f);
    int extra = fgetc(f);               /* the file must not have grown meanwhile */
    int bad = ferror(f);
    fclose(f);
    if (got != size || extra != EOF || bad) {
        free(buf);
        fail("%s: read error or file changed while reading", path);
    }
    buf[size] = 0;
    *size_out = size;
    return buf;
}
