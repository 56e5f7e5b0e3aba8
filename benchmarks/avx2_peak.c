/*
 * avx2_peak.c -- the int8 multiply-accumulate ceilings of one AVX2 core, the two steps the C
 * engine's avx2 build uses (c/fast/avx2.c), nothing else in the loop:
 *   u8 pairs  vpmaddubsw + vpmaddwd (by ones) + vpaddd: 32 u8 x s8 MACs (layers whose weight pairs
 *             keep the int16 sums exact: every weight of at most 7 bits, c/fast/tile_u8.inc)
 *   s16       vpmaddwd + vpaddd: 16 int16 x int16 MACs (the exact path of any 8-bit layer)
 * Each with 12 independent accumulator chains, the best of RUNS timed runs (a busy machine lowers
 * a run, never raises it).  The GMAC/s in benchmarks/bench_inference.py reads against the ceiling
 * of the path its weights take.
 *   make avx2-peak     (built with -mavx2)
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 12
#define STEPS 20000000L
#define RUNS 5

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int checksum(const __m256i *c)
{
    __m256i s = c[0];
    for (int i = 1; i < CHAINS; i++)
        s = _mm256_add_epi32(s, c[i]);
    int out[8], total = 0;
    _mm256_storeu_si256((__m256i *)out, s);
    for (int i = 0; i < 8; i++)
        total += out[i];
    return total;
}

static void report(const char *name, double macs_per_step, double seconds, int check)
{
    printf("%s: %.0f GMAC/s on one core (checksum %d)\n", name, CHAINS * macs_per_step * (double)STEPS / seconds / 1e9,
           check);
}

/* One timed run of STEPS steps of the 12 chains of one step kind; *check its checksum */
#define TIMED_RUN(step)                                                                    \
    __m256i a = _mm256_set1_epi8(1), b = _mm256_set1_epi8(2), ones = _mm256_set1_epi16(1), c[CHAINS]; \
    (void)ones;                                                                            \
    for (int i = 0; i < CHAINS; i++)                                                       \
        c[i] = _mm256_set1_epi32(i);       /* distinct starts: the chains cannot be merged */ \
    double t = now();                                                                      \
    for (long i = 0; i < STEPS; i++) {                                                     \
        _Pragma("GCC unroll 12") for (int k = 0; k < CHAINS; k++) c[k] = (step);           \
        __asm__ volatile("" : "+x"(a), "+x"(b));   /* inputs unknown to the compiler */     \
    }                                                                                      \
    t = now() - t;                                                                         \
    *check = checksum(c);                                                                  \
    return t

static double run_u8_pairs(int *check)
{
    TIMED_RUN(_mm256_add_epi32(c[k], _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones)));
}

static double run_s16(int *check)
{
    TIMED_RUN(_mm256_add_epi32(c[k], _mm256_madd_epi16(a, b)));
}

/* the fewest seconds of RUNS runs */
static double best(double (*run)(int *), int *check)
{
    double seconds = 1e30;
    for (int i = 0; i < RUNS; i++) {
        const double t = run(check);
        seconds = t < seconds ? t : seconds;
    }
    return seconds;
}

int main(void)
{
    int check;
    double seconds = best(run_u8_pairs, &check);
    report("u8 pairs (vpmaddubsw + vpmaddwd + vpaddd)", 32.0, seconds, check);
    seconds = best(run_s16, &check);
    report("s16 (vpmaddwd + vpaddd)", 16.0, seconds, check);
    return 0;
}
