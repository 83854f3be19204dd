"""The C source of `spiking_lm.nn.native`'s kernels, kept apart from the Python that builds and calls them.

Every function is exact where the torch path it replaces is (integer sums) and otherwise performs the same fp32
operations in the same order (compiled with ``-ffp-contract=off``); each one names the torch path it mirrors.

This module imports nothing so that it can travel with a saved model's code.
"""

__all__ = ["SOURCE"]

SOURCE = r"""
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PREFETCH_AHEAD 2

#ifdef __cplusplus
extern "C" {  /* compiled as C++ (g++), the functions keep their C names for ctypes */
#endif

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

/* result[r, j] = ((float)sum_s counts[r, selected[s]] * q[selected[s], j]) * scale[j] (+ shift[j]) (+ bias[j]):
   the integer sums are exact. The selected rows of q are shared among the threads, each read whole once for all
   the rows of counts that select it (the next rows prefetched: they are scattered); products are added into int16
   sums for as many rows as cannot overflow them (32 lanes an instruction), then into int32. The threads' partial
   sums are added by columns. */
void int8_rows_product(const int8_t *counts, int64_t rows, int64_t in, const int32_t *selected, int64_t n,
                       const int8_t *q, int64_t out, const float *scale, const float *shift, const float *bias,
                       float *result, int threads) {
    int32_t largest = 1;
    for (int64_t e = 0; e < rows * in; e++) {
        int32_t k = counts[e] < 0 ? -counts[e] : counts[e];
        if (k > largest) largest = k;
    }
    const int32_t burst = 32767 / (127 * largest);  /* int16 sums of this many products cannot overflow */
    int32_t *partial = (int32_t *)malloc(sizeof(int32_t) * threads * rows * out);
    int16_t *shorts = (int16_t *)malloc(sizeof(int16_t) * threads * rows * out);
    int32_t *pending = (int32_t *)malloc(sizeof(int32_t) * threads * rows);
    #pragma omp parallel num_threads(threads)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        int32_t *acc = partial + (int64_t)tid * rows * out;
        int16_t *acc16 = shorts + (int64_t)tid * rows * out;
        int32_t *added = pending + (int64_t)tid * rows;
        memset(acc, 0, sizeof(int32_t) * rows * out);
        memset(acc16, 0, sizeof(int16_t) * rows * out);
        memset(added, 0, sizeof(int32_t) * rows);
        int64_t first = n * tid / nt, last = n * (tid + 1) / nt;
        for (int64_t s = first; s < last; s++) {
            int64_t i = selected[s];
            const int8_t *row = q + i * out;
            if (s + PREFETCH_AHEAD < last) {  /* the rows are scattered: fetch ahead while this one is summed */
                const int8_t *next = q + (int64_t)selected[s + PREFETCH_AHEAD] * out;
                for (int64_t j = 0; j < out; j += 64) __builtin_prefetch(next + j, 0, 0);
            }
            for (int64_t r = 0; r < rows; r++) {
                int16_t k = counts[r * in + i];
                if (k == 0) continue;
                int16_t *a = acc16 + r * out;
                if (k == 1) {
                    for (int64_t j = 0; j < out; j++) a[j] += row[j];
                } else {
                    for (int64_t j = 0; j < out; j++) a[j] += (int16_t)(k * row[j]);
                }
                if (++added[r] == burst) {
                    int32_t *w = acc + r * out;
                    for (int64_t j = 0; j < out; j++) { w[j] += a[j]; a[j] = 0; }
                    added[r] = 0;
                }
            }
        }
        for (int64_t r = 0; r < rows; r++) {
            int32_t *w = acc + r * out;
            int16_t *a = acc16 + r * out;
            for (int64_t j = 0; j < out; j++) w[j] += a[j];
        }
        #pragma omp barrier
        int64_t j0 = out * tid / nt, j1 = out * (tid + 1) / nt;
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t j = j0; j < j1; j++) {
                int32_t sum = 0;
                for (int t = 0; t < nt; t++) sum += partial[((int64_t)t * rows + r) * out + j];
                float v = (float)sum * scale[j];
                if (shift) v = v + shift[j];
                if (bias) v = v + bias[j];
                result[r * out + j] = v;
            }
        }
    }
    free(pending);
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

#ifdef __cplusplus
}
#endif
"""
