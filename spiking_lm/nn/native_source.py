"""The C source of `spiking_lm.nn.native`'s kernels, kept apart from the Python that builds and calls them.

Every function is exact where the torch path it replaces is (integer sums) and otherwise performs the same fp32
operations in the same order (compiled with ``-ffp-contract=off``); each one names the torch path it mirrors.

This module is over 400 lines because it is one C translation unit (the library is built from one source, and
its static helpers are shared between the kernels). It imports nothing so that it can travel with a saved model's
code.
"""

__all__ = ["SOURCE"]

SOURCE = r"""
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define INT8_DOT 1  /* AVX-512 VNNI: 64 int8 products added into 16 int32 sums an instruction */
#endif

#define PREFETCH_AHEAD 16  /* scattered weight rows are prefetched this many selected inputs ahead */

#ifdef __cplusplus
extern "C" {  /* compiled as C++ (g++), the functions keep their C names for ctypes */
#endif

void lif_steps(const float *x, int64_t steps, int64_t n, float beta, float threshold, float *spikes, int threads);
void integer_fire(const float *x, int64_t n, float lower, float upper, float scale, float *spikes);

/* A neuron firing on x (steps blocks of n): how = {1, lower, upper, scale} for `integer_fire`, {2, beta,
   threshold, 0} for `lif_steps`. */
static void fire_into(const float *x, int64_t steps, int64_t n, const float *how, float *spikes) {
    if (how[0] == 1.0f) integer_fire(x, steps * n, how[1], how[2], how[3], spikes);
    else lif_steps(x, steps, n, how[1], how[2], spikes, 1);
}

/* counts[r, i] = round((x[r, i] - offset) / unit) as int8 and the inputs i that some row selects (k != 0).
   Returns how many were selected, or -1 if a value is not finite or its count is outside [-128, 127]. */
int64_t spike_counts(const float *x, int64_t rows, int64_t in, float offset, float unit, int has_offset,
                     int8_t *counts, int32_t *selected) {
    int64_t n = 0;
    memset(selected, 0, sizeof(int32_t) * in);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < in; i++) {
            float v = x[r * in + i];
            if (has_offset) v = v - offset;
            if (unit != 1.0f) v = nearbyintf(v / unit);
            if (!(v >= -128.0f && v <= 127.0f)) return -1;
            counts[r * in + i] = (int8_t)v;
            selected[i] |= (v != 0.0f);
        }
    }
    for (int64_t i = 0; i < in; i++)
        if (selected[i]) selected[n++] = (int32_t)i;
    return n;
}

/* Prefetch n bytes of a weight row (rows are scattered: fetched ahead of use) into L2, whose miss buffers let more
   lines be in flight than L1's: ~20 % faster decoding products than into L1. */
static void prefetch_part(const int8_t *row, int64_t n) {
    for (int64_t j = 0; j < n; j += 64) __builtin_prefetch(row + j, 0, 2);
}

/* Prefetch the weight rows of input i of every matrix of a plan. */
static void prefetch_rows(const int64_t *plan, int64_t matrices, int64_t i) {
    for (int64_t m = 0; m < matrices; m++)
        prefetch_part((const int8_t *)plan[5 * m] + i * plan[5 * m + 1], plan[5 * m + 1]);
}

#ifdef INT8_DOT
#define DOT_CHUNK 512  /* columns a thread sums at a time: their int32 sums for 8 rows stay in L1 (16 KB) */

/* int8_rows_products for 2-8 rows of counts in [0, 127] with VNNI: the selected inputs in groups of four, whose
   four weight rows are interleaved per column (byte e of each int32 lane from the e-th row), so that one
   `vpdpbusd` adds four count x weight products into each of 16 int32 sums of a row; the threads share the columns
   (DOT_CHUNK at a time), not the inputs, so each weight byte is read once and no partial sums are added after.
   A 4-group's interleaved lanes hold columns 16L + 4k + e (lane L of vector k) and are put back in order once per
   chunk. The same exact sums as the int16 path, then the same fp32 operations. */
static void rows_products_dot(const int8_t *counts, int64_t rows, int64_t in, const int32_t *selected, int64_t n,
                              const int64_t *plan, int64_t matrices, float *result, int threads) {
    int64_t groups = (n + 3) / 4, units = 0;
    int64_t *inputs = (int64_t *)malloc(sizeof(int64_t) * (groups * 4 + 1));
    uint32_t *quads = (uint32_t *)malloc(sizeof(uint32_t) * (groups * rows + 1));
    for (int64_t s = 0; s < groups * 4; s++) inputs[s] = s < n ? selected[s] : selected[n - 1];  /* count 0 */
    for (int64_t g = 0; g < groups; g++)
        for (int64_t r = 0; r < rows; r++) {
            uint32_t quad = 0;
            for (int64_t e = 0; e < 4 && 4 * g + e < n; e++)
                quad |= (uint32_t)(uint8_t)counts[r * in + inputs[4 * g + e]] << (8 * e);
            quads[g * rows + r] = quad;
        }
    for (int64_t m = 0; m < matrices; m++) units += (plan[5 * m + 1] + DOT_CHUNK - 1) / DOT_CHUNK;
    #pragma omp parallel num_threads(threads)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        __m512i *acc = (__m512i *)aligned_alloc(64, sizeof(__m512i) * 8 * DOT_CHUNK / 16);
        int32_t sums[DOT_CHUNK] __attribute__((aligned(64)));
        int64_t u0 = units * tid / nt, u1 = units * (tid + 1) / nt, u = 0, column = 0;
        for (int64_t m = 0; m < matrices; m++) {
            int64_t width = plan[5 * m + 1];
            const int8_t *q = (const int8_t *)plan[5 * m];
            const float *scale = (const float *)plan[5 * m + 2];
            const float *shift = (const float *)plan[5 * m + 3];
            const float *bias = (const float *)plan[5 * m + 4];
            for (int64_t c0 = 0; c0 < width; c0 += DOT_CHUNK, u++) {
                if (u < u0 || u >= u1) continue;
                int64_t span = width - c0 < DOT_CHUNK ? width - c0 : DOT_CHUNK, blocks = (span + 63) / 64;
                memset(acc, 0, sizeof(__m512i) * rows * blocks * 4);
                for (int64_t g = 0; g < groups && g < PREFETCH_AHEAD / 4; g++)
                    for (int64_t e = 0; e < 4; e++) prefetch_part(q + inputs[4 * g + e] * width + c0, span);
                for (int64_t g = 0; g < groups; g++) {
                    if (g + PREFETCH_AHEAD / 4 < groups)
                        for (int64_t e = 0; e < 4; e++)
                            prefetch_part(q + inputs[4 * (g + PREFETCH_AHEAD / 4) + e] * width + c0, span);
                    int64_t active[8], live = 0;  /* the rows whose four counts are not all zero */
                    for (int64_t r = 0; r < rows; r++)
                        if (quads[g * rows + r]) active[live++] = r;
                    if (live == 0) continue;
                    const int8_t *w0 = q + inputs[4 * g] * width + c0, *w1 = q + inputs[4 * g + 1] * width + c0;
                    const int8_t *w2 = q + inputs[4 * g + 2] * width + c0, *w3 = q + inputs[4 * g + 3] * width + c0;
                    for (int64_t b = 0; b < blocks; b++) {
                        __mmask64 mask = span - 64 * b >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (span - 64 * b)) - 1;
                        __m512i z0 = _mm512_maskz_loadu_epi8(mask, w0 + 64 * b);
                        __m512i z1 = _mm512_maskz_loadu_epi8(mask, w1 + 64 * b);
                        __m512i z2 = _mm512_maskz_loadu_epi8(mask, w2 + 64 * b);
                        __m512i z3 = _mm512_maskz_loadu_epi8(mask, w3 + 64 * b);
                        __m512i lo01 = _mm512_unpacklo_epi8(z0, z1), hi01 = _mm512_unpackhi_epi8(z0, z1);
                        __m512i lo23 = _mm512_unpacklo_epi8(z2, z3), hi23 = _mm512_unpackhi_epi8(z2, z3);
                        __m512i d[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                                        _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
                        for (int64_t a = 0; a < live; a++) {
                            int64_t r = active[a];
                            __m512i k = _mm512_set1_epi32((int32_t)quads[g * rows + r]);
                            __m512i *sum = acc + (r * blocks + b) * 4;
                            for (int v = 0; v < 4; v++) sum[v] = _mm512_dpbusd_epi32(sum[v], k, d[v]);
                        }
                    }
                }
                for (int64_t r = 0; r < rows; r++) {
                    for (int64_t b = 0; b < blocks; b++) {  /* lanes back in column order: a 4 x 4 transpose */
                        const __m512i *sum = acc + (r * blocks + b) * 4;
                        __m512i t0 = _mm512_shuffle_i32x4(sum[0], sum[1], 0x44);
                        __m512i t1 = _mm512_shuffle_i32x4(sum[2], sum[3], 0x44);
                        __m512i t2 = _mm512_shuffle_i32x4(sum[0], sum[1], 0xEE);
                        __m512i t3 = _mm512_shuffle_i32x4(sum[2], sum[3], 0xEE);
                        _mm512_store_si512((__m512i *)(sums + 64 * b), _mm512_shuffle_i32x4(t0, t1, 0x88));
                        _mm512_store_si512((__m512i *)(sums + 64 * b + 16), _mm512_shuffle_i32x4(t0, t1, 0xDD));
                        _mm512_store_si512((__m512i *)(sums + 64 * b + 32), _mm512_shuffle_i32x4(t2, t3, 0x88));
                        _mm512_store_si512((__m512i *)(sums + 64 * b + 48), _mm512_shuffle_i32x4(t2, t3, 0xDD));
                    }
                    float *__restrict__ target = result + rows * column + r * width + c0;
                    for (int64_t j = 0; j < span; j++) target[j] = (float)sums[j] * scale[c0 + j];
                    if (shift)
                        for (int64_t j = 0; j < span; j++) target[j] = target[j] + shift[c0 + j];
                    if (bias)
                        for (int64_t j = 0; j < span; j++) target[j] = target[j] + bias[c0 + j];
                }
            }
            column += width;
        }
        free(acc);
    }
    free(quads);
    free(inputs);
}
#endif

#ifdef INT8_DOT
/* Lane i of the result = the sum of the 16 lanes of v[i]: 16 horizontal sums in 45 instructions (pairs
   interleaved and added, then 64-bit halves, then 128-bit lanes) instead of 16 separate reductions. */
static inline __m512i reduce16(const __m512i *v) {
    __m512i a[8], b[4];
    for (int i = 0; i < 8; i++)  /* per 128-bit lane: v[2i] and v[2i+1]'s elements 0+2 and 1+3, interleaved */
        a[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]),
                                _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)  /* per 128-bit lane: the lane's sums of v[4i], ..., v[4i+3] */
        b[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(a[2 * i], a[2 * i + 1]),
                                _mm512_unpackhi_epi64(a[2 * i], a[2 * i + 1]));
    __m512i c0 = _mm512_add_epi32(_mm512_shuffle_i32x4(b[0], b[1], 0x44), _mm512_shuffle_i32x4(b[0], b[1], 0xEE));
    __m512i c1 = _mm512_add_epi32(_mm512_shuffle_i32x4(b[2], b[3], 0x44), _mm512_shuffle_i32x4(b[2], b[3], 0xEE));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(c0, c1, 0x88), _mm512_shuffle_i32x4(c0, c1, 0xDD));
}
#endif

/* For each matrix m of a plan (5 int64 per matrix: the address of q_m (in, out_m) int8, out_m, and the addresses of
   its fp32 scale, shift and bias, 0 for none), result_m[r, j] = ((float)sum_s counts[r, selected[s]] *
   q_m[selected[s], j]) * scale[j] (+ shift[j]) (+ bias[j]), result_m (rows, out_m) at result + rows * (out_0 + ...
   + out_{m-1}): the integer sums are exact. The selected rows are shared among the threads; each reads the row of
   every matrix once for all the rows of counts that select it (the next rows prefetched: they are scattered);
   products are added into int16 sums for as many rows as cannot overflow them (32 lanes an instruction), then
   into int32. The threads' partial sums are added by columns. */
void int8_rows_products(const int8_t *counts, int64_t rows, int64_t in, const int32_t *selected, int64_t n,
                        const int64_t *plan, int64_t matrices, float *result, int threads) {
    int32_t largest = 1, smallest = 0;
    for (int64_t e = 0; e < rows * in; e++) {
        int32_t k = counts[e] < 0 ? -counts[e] : counts[e];
        if (k > largest) largest = k;
        if (counts[e] < smallest) smallest = counts[e];
    }
#ifdef INT8_DOT
    if (rows >= 2 && rows <= 8 && smallest >= 0 && n > 0) {
        rows_products_dot(counts, rows, in, selected, n, plan, matrices, result, threads);
        return;
    }
#endif
    const int32_t burst = 32767 / (127 * largest);  /* int16 sums of this many products cannot overflow */
    int64_t out = 0;  /* the matrices' outputs side by side: column c of matrix m is out_0 + ... + out_{m-1} + c */
    for (int64_t m = 0; m < matrices; m++) out += plan[5 * m + 1];
    int32_t *partial = (int32_t *)malloc(sizeof(int32_t) * threads * rows * out);
    int16_t *shorts = (int16_t *)malloc(sizeof(int16_t) * threads * rows * out);
    #pragma omp parallel num_threads(threads)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        int32_t *acc = partial + (int64_t)tid * rows * out;
        int16_t *acc16 = shorts + (int64_t)tid * rows * out;
        int32_t *added = (int32_t *)malloc(sizeof(int32_t) * rows);  /* per thread: a shared line would bounce */
        memset(acc, 0, sizeof(int32_t) * rows * out);
        memset(acc16, 0, sizeof(int16_t) * rows * out);
        memset(added, 0, sizeof(int32_t) * rows);
        int64_t first = n * tid / nt, last = n * (tid + 1) / nt, s = first;
        for (int64_t g = first; g < first + PREFETCH_AHEAD && g < last; g++)
            prefetch_rows(plan, matrices, selected[g]);
        /* one row of counts (every selected input has a count): four selected weight rows at a time where four
           products per element cannot overflow an int16, the sums read and written once per four rows (30 %
           faster; with more rows of counts, zeros would be multiplied and it is slower) */
        for (; rows == 1 && burst >= 4 && s + 4 <= last; s += 4) {
            int64_t i0 = selected[s], i1 = selected[s + 1], i2 = selected[s + 2], i3 = selected[s + 3];
            for (int64_t g = s + PREFETCH_AHEAD; g < s + PREFETCH_AHEAD + 4 && g < last; g++)
                prefetch_rows(plan, matrices, selected[g]);
            for (int64_t r = 0; r < rows; r++) {
                const int8_t *k = counts + r * in;
                int16_t k0 = k[i0], k1 = k[i1], k2 = k[i2], k3 = k[i3];
                if ((k0 | k1 | k2 | k3) == 0) continue;
                int16_t *__restrict__ a = acc16 + r * out;
                for (int64_t m = 0; m < matrices; m++) {
                    int64_t width = plan[5 * m + 1];
                    const int8_t *q = (const int8_t *)plan[5 * m];
                    const int8_t *__restrict__ w0 = q + i0 * width, *__restrict__ w1 = q + i1 * width;
                    const int8_t *__restrict__ w2 = q + i2 * width, *__restrict__ w3 = q + i3 * width;
                    for (int64_t j = 0; j < width; j++)
                        a[j] += (int16_t)(k0 * w0[j] + k1 * w1[j] + k2 * w2[j] + k3 * w3[j]);
                    a += width;
                }
                added[r] += 4;
                if (added[r] + 4 > burst) {
                    int32_t *w = acc + r * out;
                    int16_t *b = acc16 + r * out;
                    for (int64_t j = 0; j < out; j++) { w[j] += b[j]; b[j] = 0; }
                    added[r] = 0;
                }
            }
        }
        for (; s < last; s++) {
            int64_t i = selected[s];
            if (s + PREFETCH_AHEAD < last) prefetch_rows(plan, matrices, selected[s + PREFETCH_AHEAD]);
            for (int64_t r = 0; r < rows; r++) {
                int16_t k = counts[r * in + i];
                if (k == 0) continue;
                int16_t *a = acc16 + r * out;
                for (int64_t m = 0; m < matrices; m++) {
                    int64_t width = plan[5 * m + 1];
                    const int8_t *row = (const int8_t *)plan[5 * m] + i * width;
                    if (k == 1) {
                        for (int64_t j = 0; j < width; j++) a[j] += row[j];
                    } else {
                        for (int64_t j = 0; j < width; j++) a[j] += (int16_t)(k * row[j]);
                    }
                    a += width;
                }
                if (++added[r] == burst) {
                    int32_t *w = acc + r * out;
                    int16_t *b = acc16 + r * out;
                    for (int64_t j = 0; j < out; j++) { w[j] += b[j]; b[j] = 0; }
                    added[r] = 0;
                }
            }
        }
        for (int64_t r = 0; r < rows; r++) {
            int32_t *w = acc + r * out;
            int16_t *a = acc16 + r * out;
            for (int64_t j = 0; j < out; j++) w[j] += a[j];
        }
        free(added);
        #pragma omp barrier
        /* the threads' partial sums added by columns, then the fp32 operations, each loop over contiguous columns
           (vectorized: this is most of a call's fixed cost) */
        int64_t column = 0;
        for (int64_t m = 0; m < matrices; m++) {
            int64_t width = plan[5 * m + 1];
            const float *scale = (const float *)plan[5 * m + 2];
            const float *shift = (const float *)plan[5 * m + 3];
            const float *bias = (const float *)plan[5 * m + 4];
            int64_t j0 = width * tid / nt, j1 = width * (tid + 1) / nt;
            for (int64_t r = 0; r < rows; r++) {
                int32_t *__restrict__ sum = partial + r * out + column;  /* thread 0's: the total goes there */
                for (int t = 1; t < nt; t++) {
                    const int32_t *__restrict__ other = partial + ((int64_t)t * rows + r) * out + column;
                    for (int64_t j = j0; j < j1; j++) sum[j] += other[j];
                }
                float *__restrict__ target = result + rows * column + r * width;
                for (int64_t j = j0; j < j1; j++) target[j] = (float)sum[j] * scale[j];
                if (shift)
                    for (int64_t j = j0; j < j1; j++) target[j] = target[j] + shift[j];
                if (bias)
                    for (int64_t j = j0; j < j1; j++) target[j] = target[j] + bias[j];
            }
            column += width;
        }
    }
    free(shorts);
    free(partial);
}

/* scores[g, r, j] = (float)(sum_e q[g, r, e] * k[g, j, e]) * scale: overlap counts of int8 queries and an int8
   key cache (group g at k + g * stride, its rows of d contiguous), exact in int32 before the one scaling. */
void int8_attention_scores(const int8_t *q, const int8_t *k, int64_t groups, int64_t lq, int64_t lk, int64_t d,
                           int64_t stride, float scale, float *scores, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        for (int64_t r = 0; r < lq; r++) {
            const int8_t *query = q + (g * lq + r) * d;
            float *out = scores + (g * lq + r) * lk;
            for (int64_t j = 0; j < lk; j++) {
                const int8_t *key = k + g * stride + j * d;
                int32_t sum = 0;
                for (int64_t e = 0; e < d; e++) sum += (int32_t)query[e] * key[e];
                out[j] = (float)sum * scale;
            }
        }
    }
}

/* context[g, r, e] = (float)sum_j a[g, r, j] * v[g, j, e] for 0/1 attention spikes a and an int8 value cache
   (laid out as the keys above): the rows of v the spikes select, added in int32. */
void int8_attention_context(const float *a, const int8_t *v, int64_t groups, int64_t lq, int64_t lk, int64_t d,
                            int64_t stride, float *context, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        int32_t sum[d];
        for (int64_t r = 0; r < lq; r++) {
            const float *spikes = a + (g * lq + r) * lk;
            memset(sum, 0, sizeof(int32_t) * d);
            for (int64_t j = 0; j < lk; j++) {
                if (spikes[j] == 0.0f) continue;
                const int8_t *value = v + g * stride + j * d;
                for (int64_t e = 0; e < d; e++) sum[e] += value[e];
            }
            float *out = context + (g * lq + r) * d;
            for (int64_t e = 0; e < d; e++) out[e] = (float)sum[e];
        }
    }
}

/* Decoding SFSA in one call over an int8 K/V cache: for each batch b, head h and query row r, over the steps t, the
   overlap counts of the query counts round(q / unit) with the keys (exact int32), scaled twice (scores = sum *
   qk_scale, then * score_scale: SFSA's two fp32 multiplications), through the attention LIF (`lif_steps`' operations:
   soft reset, the membrane per key carried over t), and the exact sum of the value rows it selects (three loops over
   the keys, the first two vectorized), divided by `root` and multiplied by `value_unit` (if not 1). Query (T, B, H,
   Lq, d) fp32 contiguous; cache group g = (b * T + t) * H + h at k + g * k_stride (its rows of d contiguous), likewise
   v. With new_k and new_v (one position's spike values of units k_unit, v_unit), their counts are first written into
   the last row (lk - 1) of each group: the append and the attention in one call. With k_words > 0 the keys are 0/1
   spikes kept as bits (`pack_bits`' words: bit i of word w is element 64 w + i; k_stride counts words), the query and
   new_k must be 0/1 too, and the overlaps are popcounts of AND-ed words: the same integers. With fire, the query,
   new_k and new_v given are membranes, fired first (`fire_into`). Writes the attention spikes (T, B, H, Lq, Lk) and
   the context (T, B, Lq, H * d). Returns -1, writing nothing, if a query (or new K/V) value is not finite or its count
   is outside [-128, 127]. */
static int int8_counts_fit(const float *x, int64_t n, float unit, float lowest, float highest) {
    for (int64_t e = 0; e < n; e++) {
        float c = unit == 1.0f ? x[e] : nearbyintf(x[e] / unit);
        if (!(c >= lowest && c <= highest)) return 0;
    }
    return 1;
}

/* The 0/1 counts of d spike values x (unit 1) as `pack_bits` words. */
static void pack_row(const float *x, int64_t d, int64_t words, uint64_t *out) {
    for (int64_t w = 0; w < words; w++) {
        uint64_t word = 0;
        for (int64_t i = 0; i < 64 && w * 64 + i < d; i++)
            if (x[w * 64 + i] != 0.0f) word |= (uint64_t)1 << i;
        out[w] = word;
    }
}

int64_t sfsa_decode(const float *query, float unit, int8_t *k, int8_t *v, int64_t steps, int64_t batch,
                    int64_t heads, int64_t lq, int64_t lk, int64_t d, int64_t k_words, int64_t k_stride,
                    int64_t v_stride,
                    float qk_scale, float score_scale, float beta, float threshold, float root, float value_unit,
                    const float *new_k, const float *new_v, float k_unit, float v_unit, const float *fire,
                    float *weights, float *context, int threads) {
    int64_t total = steps * batch * heads * lq * d;
    float *fired = NULL;
    if (fire) {  /* query, new_k and new_v are membranes their neurons (fire[0..3], [4..7], [8..11]) fire on */
        fired = (float *)malloc(sizeof(float) * 3 * total);
        fire_into(query, steps, total / steps, fire, fired);
        fire_into(new_k, steps, total / steps, fire + 4, fired + total);
        fire_into(new_v, steps, total / steps, fire + 8, fired + 2 * total);
        query = fired;
        new_k = fired + total;
        new_v = fired + 2 * total;
    }
    float highest = k_words ? 1.0f : 127.0f, lowest = k_words ? 0.0f : -128.0f;  /* bits hold only 0/1 */
    if (!int8_counts_fit(query, total, unit, lowest, highest)
        || (new_k && (!int8_counts_fit(new_k, total, k_unit, lowest, highest)
                      || !int8_counts_fit(new_v, total, v_unit, -128.0f, 127.0f)))) {
        free(fired);
        return -1;
    }
    uint64_t *kw = (uint64_t *)k;
    if (new_k) {  /* one new position (lq = 1), (T, B, H, d), written as counts at row lk - 1 of each group */
        for (int64_t t = 0; t < steps; t++)
            for (int64_t b = 0; b < batch; b++)
                for (int64_t h = 0; h < heads; h++) {
                    int64_t g = (b * steps + t) * heads + h, source = ((t * batch + b) * heads + h) * d;
                    int8_t *key = k + g * k_stride + (lk - 1) * d, *value = v + g * v_stride + (lk - 1) * d;
                    if (k_words) pack_row(new_k + source, d, k_words, kw + g * k_stride + (lk - 1) * k_words);
                    for (int64_t e = 0; e < d; e++) {
                        float x = new_k[source + e], y = new_v[source + e];
                        if (!k_words) key[e] = (int8_t)(k_unit == 1.0f ? x : nearbyintf(x / k_unit));
                        value[e] = (int8_t)(v_unit == 1.0f ? y : nearbyintf(y / v_unit));
                    }
                }
    }
    #pragma omp parallel num_threads(threads)
    {
        float *membrane = (float *)malloc(sizeof(float) * (lk > 0 ? lk : 1));
        int32_t *sum = (int32_t *)malloc(sizeof(int32_t) * d);
        int32_t *overlaps = (int32_t *)malloc(sizeof(int32_t) * (lk > 0 ? lk : 1));
        int8_t *counts = (int8_t *)malloc(d);
        uint64_t *bits = (uint64_t *)malloc(sizeof(uint64_t) * (k_words + 1));
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < batch * heads * lq; task++) {
            int64_t b = task / (heads * lq), h = task / lq % heads, r = task % lq;
            for (int64_t t = 0; t < steps; t++) {
                int64_t g = (b * steps + t) * heads + h;
                const float *q = query + (((t * batch + b) * heads + h) * lq + r) * d;
                int8_t smallest = 0;
                for (int64_t e = 0; e < d; e++) {
                    counts[e] = (int8_t)(unit == 1.0f ? q[e] : nearbyintf(q[e] / unit));
                    if (counts[e] < smallest) smallest = counts[e];
                }
                if (k_words) pack_row(q, d, k_words, bits);  /* 0/1 counts: unit 1 */
                float *spikes = weights + (((t * batch + b) * heads + h) * lq + r) * lk;
                memset(sum, 0, sizeof(int32_t) * d);
                if (k_words == 1) {  /* head size <= 64: one word a key (vectorized popcounts) */
                    const uint64_t *words = kw + g * k_stride, word = bits[0];
                    for (int64_t j = 0; j < lk; j++) overlaps[j] = (int32_t)__builtin_popcountll(word & words[j]);
                } else {
                    int64_t j = 0;
#ifdef INT8_DOT
                    /* int8 keys of 64, a non-negative query: 16 keys' products by VNNI, their sums reduced together */
                    if (k_words == 0 && d == 64 && smallest >= 0) {
                        __m512i qv = _mm512_loadu_si512(counts), dots[16];
                        for (; j + 16 <= lk; j += 16) {
                            for (int e = 0; e < 16; e++)
                                dots[e] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qv,
                                                              _mm512_loadu_si512(k + g * k_stride + (j + e) * 64));
                            _mm512_storeu_si512(overlaps + j, reduce16(dots));
                        }
                    }
#endif
                    for (; j < lk; j++) {
                        const int8_t *key = k + g * k_stride + j * d;
                        const uint64_t *words = kw + g * k_stride + j * k_words;
                        int32_t overlap = 0;
                        if (k_words)
                            for (int64_t w = 0; w < k_words; w++) overlap += __builtin_popcountll(bits[w] & words[w]);
                        else
                            for (int64_t e = 0; e < d; e++) overlap += (int32_t)counts[e] * key[e];
                        overlaps[j] = overlap;
                    }
                }
                for (int64_t j = 0; j < lk; j++) {  /* the attention LIF, element-wise: vectorized */
                    float x = ((float)overlaps[j] * qk_scale) * score_scale;
                    float potential = t == 0 ? x : membrane[j] + x;
                    float spike = potential >= threshold ? 1.0f : 0.0f;
                    spikes[j] = spike;
                    membrane[j] = (potential - threshold * spike) * beta;
                }
                /* the context: the value rows of the keys that spiked (int16 sums of 256 of them cannot overflow; the
                   next rows prefetched: 35 % faster at T = 4 with the two loops above) */
                for (int64_t j0 = 0; j0 < lk; j0 += 256) {
                    int64_t j1 = j0 + 256 < lk ? j0 + 256 : lk;
                    int16_t short_sum[64] = {0};
                    for (int64_t j = j0; j < j1 && d == 64; j++) {
                        if (j + 16 < lk) __builtin_prefetch(v + g * v_stride + (j + 16) * 64, 0, 2);
                        if (spikes[j] == 0.0f) continue;
                        const int8_t *value = v + g * v_stride + j * 64;
                        for (int64_t e = 0; e < 64; e++) short_sum[e] += value[e];
                    }
                    for (int64_t e = 0; e < 64 && d == 64; e++) sum[e] += short_sum[e];
                    for (int64_t j = j0; j < j1 && d != 64; j++) {
                        if (spikes[j] == 0.0f) continue;
                        const int8_t *value = v + g * v_stride + j * d;
                        for (int64_t e = 0; e < d; e++) sum[e] += value[e];
                    }
                }
                float *out = context + ((t * batch + b) * lq + r) * heads * d + h * d;
                for (int64_t e = 0; e < d; e++) {
                    float c = (float)sum[e] / root;
                    out[e] = value_unit == 1.0f ? c : c * value_unit;
                }
            }
        }
        free(bits);
        free(counts);
        free(overlaps);
        free(sum);
        free(membrane);
    }
    free(fired);
    return 0;
}

/* A Linear's int8 weights q (in, out) on real inputs that are integer counts times a power of two, x = k * unit
   (SFSA's context): result[r, j] = ((float)(sum_i k[r, i] * q[i, j]) * unit) * scale[j] (+ bias[j]). That is what
   F.linear(x, q^T) * scale + bias computes in fp32 whenever every partial sum of its products is exact, which
   sum_i |k[r, i]| * 127 < 2^24 ensures: then every product and partial sum here is an exact integer in fp32 too
   (fp32 lanes multiply and add faster than int32 ones), in whatever order. Returns -1, writing nothing, where a
   value is not such a count or a row's counts exceed that bound. Only the weight rows of inputs some row counts are
   read (a context can be mostly zeros), four at a time, for four rows of counts at a time; the threads take shares
   of the columns (whole cache lines). */
#ifdef __FMA__
#define MADD(a, b, c) fmaf(a, b, c)  /* exact integers: the same result as a * b + c, in one instruction */
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif
int64_t counts_product(const float *x, int64_t rows, int64_t in, float unit, const int8_t *q, int64_t out,
                       const float *scale, const float *bias, float *result, int threads) {
    float *counts = (float *)malloc(sizeof(float) * (rows * in + 1));
    int32_t *selected = (int32_t *)calloc(in + 1, sizeof(int32_t));
    for (int64_t r = 0; r < rows; r++) {
        double total = 0.0;
        for (int64_t i = 0; i < in; i++) {
            float k = x[r * in + i] / unit;
            if (!(k == nearbyintf(k) && fabsf(k) < 16777216.0f)) { free(counts); free(selected); return -1; }
            counts[r * in + i] = k;
            selected[i] |= k != 0.0f;
            total += fabsf(k);
        }
        if (total * 127.0 >= 16777216.0) { free(counts); free(selected); return -1; }
    }
    int64_t n = 0;
    for (int64_t i = 0; i < in; i++)
        if (selected[i]) selected[n++] = (int32_t)i;
    int team = n > 0 ? threads : 1;  /* nothing counted (a silent context): only the bias to write */
    int64_t chunk = ((out + team - 1) / team + 63) / 64 * 64;
    #pragma omp parallel num_threads(team)
    {
        int64_t tid = omp_get_thread_num();
        int64_t j0 = tid * chunk < out ? tid * chunk : out, j1 = j0 + chunk < out ? j0 + chunk : out, width = j1 - j0;
        float *acc = (float *)calloc(rows * width + 1, sizeof(float));
        int8_t *zero = (int8_t *)calloc(width + 1, 1);  /* stands in for the missing rows of a last group */
        for (int64_t g = 0; g < PREFETCH_AHEAD && g < n; g++) prefetch_part(q + selected[g] * out + j0, width);
        for (int64_t s = 0; s < n; s += 4) {
            for (int64_t g = s + PREFETCH_AHEAD; g < s + PREFETCH_AHEAD + 4 && g < n; g++)
                prefetch_part(q + selected[g] * out + j0, width);  /* 30 % faster for the T = 4 context */
            const int8_t *w[4];
            int64_t idx[4];
            for (int c = 0; c < 4; c++) {
                idx[c] = s + c < n ? selected[s + c] : -1;
                w[c] = idx[c] < 0 ? zero : q + idx[c] * out + j0;
            }
            const int8_t *__restrict__ w0 = w[0], *__restrict__ w1 = w[1], *__restrict__ w2 = w[2];
            const int8_t *__restrict__ w3 = w[3];
            float k[4][4];  /* k[row in the block][input of the group] */
            int64_t r = 0;
            for (; r < rows; r += 4) {
                int64_t block = rows - r < 4 ? rows - r : 4;
                for (int64_t b = 0; b < 4; b++)
                    for (int c = 0; c < 4; c++)
                        k[b][c] = b < block && idx[c] >= 0 ? counts[(r + b) * in + idx[c]] : 0.0f;
                float *__restrict__ a0 = acc + r * width;
                float any = 0.0f;
                for (int64_t b = 0; b < 4; b++)
                    any += fabsf(k[b][0]) + fabsf(k[b][1]) + fabsf(k[b][2]) + fabsf(k[b][3]);
                if (any == 0.0f) continue;  /* these rows count none of the four inputs */
                if (block == 4) {  /* each weight read converted once for four rows of counts */
                    float *__restrict__ a1 = a0 + width, *__restrict__ a2 = a1 + width, *__restrict__ a3 = a2 + width;
                    for (int64_t j = 0; j < width; j++) {
                        float x0 = (float)w0[j], x1 = (float)w1[j], x2 = (float)w2[j], x3 = (float)w3[j];
                        a0[j] = MADD(k[0][3], x3, MADD(k[0][2], x2, MADD(k[0][1], x1, MADD(k[0][0], x0, a0[j]))));
                        a1[j] = MADD(k[1][3], x3, MADD(k[1][2], x2, MADD(k[1][1], x1, MADD(k[1][0], x0, a1[j]))));
                        a2[j] = MADD(k[2][3], x3, MADD(k[2][2], x2, MADD(k[2][1], x1, MADD(k[2][0], x0, a2[j]))));
                        a3[j] = MADD(k[3][3], x3, MADD(k[3][2], x2, MADD(k[3][1], x1, MADD(k[3][0], x0, a3[j]))));
                    }
                    continue;
                }
                for (int64_t b = 0; b < block; b++) {
                    float k0 = k[b][0], k1 = k[b][1], k2 = k[b][2], k3 = k[b][3];
                    if (k0 == 0.0f && k1 == 0.0f && k2 == 0.0f && k3 == 0.0f) continue;
                    float *__restrict__ a = a0 + b * width;
                    for (int64_t j = 0; j < width; j++)
                        a[j] = MADD(k3, (float)w3[j], MADD(k2, (float)w2[j], MADD(k1, (float)w1[j],
                                                                              MADD(k0, (float)w0[j], a[j]))));
                }
            }
        }
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t j = 0; j < width; j++) {
                float v = (acc[r * width + j] * unit) * scale[j0 + j];
                if (bias) v = v + bias[j0 + j];
                result[r * out + j0 + j] = v;
            }
        }
        free(zero);
        free(acc);
    }
    free(selected);
    free(counts);
    return 0;
}

/* result[r, o] = ((float)sum_i x[r, i] * q[o, i] * row_scale[r]) * scale[o] for int8 x (rows, in) and q (out, in):
   `torch._int_mm(x, qᵀ).float()` times the rows' and the outputs' scales (the int8 LM head), the int32 sums exact.
   With VNNI each row of q is read once, in whole cache lines, for all the rows of x: the instruction multiplies
   unsigned by signed bytes, so it sums (x + 128) · q and subtracts 128 · Σq. Returns -1, writing nothing, where
   the library was built without VNNI (the caller's GEMM is then faster). */
int64_t int8_matrix_rows(const int8_t *x, int64_t rows, int64_t in, const int8_t *q, int64_t out,
                         const float *row_scale, const float *scale, float *result, int threads) {
#ifdef INT8_DOT
    if (rows > 8) return -1;
    int64_t chunks = (in + 63) / 64;
    uint8_t *shifted = (uint8_t *)malloc(rows * chunks * 64);  /* x + 128, each row zero-padded to whole chunks */
    memset(shifted, 0, rows * chunks * 64);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < in; i++) shifted[r * chunks * 64 + i] = (uint8_t)(x[r * in + i] + 128);
    const __mmask64 tail = in % 64 ? ((__mmask64)1 << (in % 64)) - 1 : ~(__mmask64)0;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t o = 0; o < out; o++) {
        const int8_t *row = q + o * in;
        const __m512i ones = _mm512_set1_epi8(1);
        __m512i sums = _mm512_setzero_si512(), acc[8];
        for (int64_t r = 0; r < 8; r++) acc[r] = _mm512_setzero_si512();
        for (int64_t c = 0; c < chunks; c++) {
            __m512i w = _mm512_maskz_loadu_epi8(c + 1 < chunks ? ~(__mmask64)0 : tail, row + 64 * c);
            sums = _mm512_dpbusd_epi32(sums, ones, w);
            for (int64_t r = 0; r < rows; r++)
                acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_loadu_si512(shifted + (r * chunks + c) * 64), w);
        }
        int32_t total = _mm512_reduce_add_epi32(sums);
        for (int64_t r = 0; r < rows; r++)
            result[r * out + o] = ((float)(_mm512_reduce_add_epi32(acc[r]) - 128 * total) * row_scale[r]) * scale[o];
    }
    free(shifted);
    return 0;
#else
    (void)x; (void)rows; (void)in; (void)q; (void)out; (void)row_scale; (void)scale; (void)result; (void)threads;
    return -1;
#endif
}

/* The LIF recurrence without autograd (soft reset): U = H + X[t]; S = U >= threshold; H = (U - threshold * S) * beta,
   the fp32 operations of the torch recurrence in its order (`spiking_lm.nn.functional._lif_inference`). */
void lif_steps(const float *x, int64_t steps, int64_t n, float beta, float threshold, float *spikes, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++) {
        float membrane = 0.0f;
        for (int64_t t = 0; t < steps; t++) {
            float potential = t == 0 ? x[i] : membrane + x[t * n + i];
            float spike = potential >= threshold ? 1.0f : 0.0f;
            spikes[t * n + i] = spike;
            membrane = (potential - threshold * spike) * beta;
        }
    }
}

/* The integer neurons at one time step: clamp(round(x), lower, upper) * scale (round half to even, NaN kept), the
   fp32 operations of `spiking_lm.nn.functional.integer_lif` at T = 1. */
void integer_fire(const float *x, int64_t n, float lower, float upper, float scale, float *spikes) {
    for (int64_t i = 0; i < n; i++) {
        float v = nearbyintf(x[i]);
        v = v < lower ? lower : v;
        v = v > upper ? upper : v;
        spikes[i] = v * scale;
    }
}

/* The spike-fed products of one input in one call: a neuron fires on the membrane x (rows, in) if asked (fire 1:
   `integer_fire` with p0, p1, p2 = lower, upper, scale; fire 2: `lif_steps` over `steps` blocks of rows with
   p0, p1 = beta, threshold; fire 0: x holds the spike values), the counts and the inputs they select are found
   (`spike_counts`) and `int8_rows_products` runs on them. Returns how many inputs were selected, or -1, writing
   nothing, where `spike_counts` refuses a value. */
int64_t spike_products(const float *x, int64_t rows, int64_t in, int fire, float p0, float p1, float p2,
                       int64_t steps, float offset, float unit, int has_offset, const int64_t *plan,
                       int64_t matrices, float *result, int threads) {
    float *fired = NULL;
    if (fire != 0) {
        fired = (float *)malloc(sizeof(float) * rows * in);
        if (fire == 1) integer_fire(x, rows * in, p0, p1, p2, fired);
        else lif_steps(x, steps, rows * in / steps, p0, p1, fired, 1);
    }
    int8_t *counts = (int8_t *)malloc(rows * in);
    int32_t *selected = (int32_t *)malloc(sizeof(int32_t) * in);
    int64_t n = spike_counts(fired ? fired : x, rows, in, offset, unit, has_offset, counts, selected);
    if (n >= 0) int8_rows_products(counts, rows, in, selected, n, plan, matrices, result, threads);
    free(selected);
    free(counts);
    free(fired);
    return n;
}

#ifdef __cplusplus
}
#endif
"""
