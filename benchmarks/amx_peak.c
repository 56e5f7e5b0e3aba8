/*
 * amx_peak.c -- the AMX-INT8 multiply-accumulate ceiling of one core: tdpbusd on 4 independent
 * accumulator tiles (16 x 16 int32 each, 16 x 16 x 64 u8 x s8 MACs an instruction), nothing else.
 * The C engine's AMX build (c/fast/amx.c, --isa amx) reads against this number.
 *   make amx-peak      (needs AMX-INT8 and Linux's permission for the tile data)
 */
#define _DEFAULT_SOURCE
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(void)
{
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0) {
        fprintf(stderr, "amx_peak: Linux refused the AMX tile data (no AMX here)\n");
        return 1;
    }
    struct {
        uint8_t palette, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
    static uint8_t a[16 * 64], b[16 * 64];
    static int32_t c[16 * 16];
    memset(a, 1, sizeof a);
    memset(b, 2, sizeof b);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, a, 64);
    _tile_loadd(5, a, 64);
    _tile_loadd(6, b, 64);
    _tile_loadd(7, b, 64);
    const long n = 20000000;
    double t = now();
    for (long i = 0; i < n; i++) {
        _tile_dpbusd(0, 4, 6);
        _tile_dpbusd(1, 5, 6);
        _tile_dpbusd(2, 4, 7);
        _tile_dpbusd(3, 5, 7);
    }
    t = now() - t;
    _tile_stored(0, c, 64);
    __asm__ __volatile__("" ::: "memory");      /* tilestored writes c behind the compiler's back */
    _tile_release();
    printf("%.3f G tdpbusd/s = %.0f GMAC/s on one core (checksum %d)\n", 4.0 * (double)n / t / 1e9,
           4.0 * 16 * 16 * 64 * (double)n / t / 1e9, c[0]);
    return 0;
}
