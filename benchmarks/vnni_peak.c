/*
 * vnni_peak.c -- the int8 multiply-accumulate ceiling of one core: 12 independent
 * chains of vpdpbusd zmm (64 u8 x s8 MACs each), nothing else.  The C engine's
 * GMAC/s in benchmarks/bench_inference.py reads against this number.
 *   make vnni-peak     (needs AVX-512 VNNI: built with -march=native)
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 12

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(void)
{
    __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x02020202), c[CHAINS];
    for (int i = 0; i < CHAINS; i++)
        c[i] = _mm512_set1_epi32(i);       /* distinct starts: the chains cannot be merged */
    const long n = 200000000;
    double t = now();
    for (long i = 0; i < n; i++) {
#pragma GCC unroll 12
        for (int k = 0; k < CHAINS; k++)
            c[k] = _mm512_dpbusd_epi32(c[k], a, b);
        __asm__ volatile("" : "+v"(a), "+v"(b));   /* inputs unknown to the compiler each round */
    }
    t = now() - t;
    __m512i s = c[0];
    for (int i = 1; i < CHAINS; i++)
        s = _mm512_add_epi32(s, c[i]);
    printf("%.2f G vpdpbusd/s = %.0f GMAC/s on one core (checksum %d)\n",
           CHAINS * (double)n / t / 1e9, CHAINS * 64.0 * (double)n / t / 1e9, _mm512_reduce_add_epi32(s));
    return 0;
}
