/* Weight-only Linear on the CPU: float32 activations, packed integer weights (glassquant.kernels.weight_only).
 *
 * Weights: codes of an (N, K) matrix in row-major order, one LSB-first bitstream of `bits` bits per code
 * (bits 2..8; the int4 layer's two-per-byte low-nibble-first layout is this stream for bits = 4, and an
 * int8 weight is one byte per code). Scales and zero points are per group: the group of element (n, k) is
 *     gi = n * row_groups + k / group
 * with row_groups = 0 and group = K for one per tensor, 1 and K for one per row, K / group per group.
 *
 * Two arithmetics, each the one of the layer it serves (nn/weight_only.py):
 *   dequantized weight (mode 0, asymmetric unsigned codes):
 *       w[n,k] = f32(code - zp[gi]) * scale[gi]     the integer difference is exact, one float32 multiply:
 *                                                   the same float32 value as the Python reference
 *       y[m,n] = sum_k x[m,k] * w[n,k]  (+ bias[n])
 *   scale after (mode 1, torchao's int8 weight-only, signed codes, one scale per row):
 *       y[m,n] = (sum_k x[m,k] * f32(code)) * scale[n]  (+ bias[n])
 * The sums are float32 in an order of this kernel's own (64 partial sums, or 32 when four input rows
 * share one pass over the weight row, then a fixed tree), not the BLAS library's: results agree with
 * the reference within float32 summation error, not bit for bit.
 * gq_wo_dequantize writes w exactly as the reference computes it (bit-identical; mode 0 only).
 *
 * Threads: OpenMP over output rows n, in the OpenMP runtime torch already loaded (torch's thread count).
 * Hot loops are compiled for x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 + FMA) beside the baseline, picked
 * at load time by the CPU (GCC target_clones); the arithmetic contract above holds in every clone.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GQ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GQ_CLONES
#endif

#define LANES 64

/* One code of the stream at global index i (bits < 8: may straddle two bytes). */
static inline int32_t code_at(const uint8_t *codes, int64_t nbytes, int64_t i, int bits) {
    int64_t bit = i * bits;
    int64_t byte = bit >> 3;
    uint32_t word = codes[byte];
    if (byte + 1 < nbytes) word |= (uint32_t)codes[byte + 1] << 8;
    return (int32_t)((word >> (bit & 7)) & ((1u << bits) - 1u));
}

/* Codes s .. s+group-1 of a row (group % 8 == 0): each 8 codes are exactly `bits` bytes, read as one
   little-endian word (8 bytes where the stream has them, else only the `bits` that exist). */
static inline __attribute__((always_inline)) void decode8(const uint8_t *row, int64_t s, int64_t group, int bits,
                                                          int32_t z, float sc, float *w, const uint8_t *end) {
    const uint64_t mask = (1u << bits) - 1u;
    for (int64_t c = s; c < s + group; c += 8) {
        const uint8_t *p = row + c / 8 * bits;
        uint64_t v = 0;
        memcpy(&v, p, (p + 8 <= end) ? 8 : (size_t)bits);
        for (int i = 0; i < 8; i++) w[c + i] = (float)((int32_t)((v >> (i * bits)) & mask) - z) * sc;
    }
}

/* Row n of the dequantized weight into w (K floats), mode 0. */
GQ_CLONES
static void dequant_row(const uint8_t *codes, int64_t nbytes, int bits, int64_t n, int64_t k, const float *scale,
                        const uint8_t *zp, int64_t group, int64_t row_groups, float *w) {
    int64_t g0 = n * row_groups;
    if (bits == 4) { /* K even (checked by the caller): the row is K/2 whole bytes */
        const uint8_t *row = codes + n * (k / 2);
        for (int64_t s = 0; s < k; s += group) {
            int64_t gi = g0 + s / group;
            int32_t z = zp[gi];
            float sc = scale[gi];
            const uint8_t *p = row + s / 2;
            float *o = w + s;
            for (int64_t j = 0; j < group / 2; j++) {
                o[2 * j] = (float)((int32_t)(p[j] & 15) - z) * sc;
                o[2 * j + 1] = (float)((int32_t)(p[j] >> 4) - z) * sc;
            }
        }
        return;
    }
    if (bits == 8) {
        const uint8_t *row = codes + n * k;
        for (int64_t s = 0; s < k; s += group) {
            int64_t gi = g0 + s / group;
            int32_t z = zp[gi];
            float sc = scale[gi];
            for (int64_t j = 0; j < group; j++) w[s + j] = (float)((int32_t)row[s + j] - z) * sc;
        }
        return;
    }
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (k % 8 == 0 && group % 8 == 0) {
        /* 8 codes = exactly `bits` bytes, and every row and group starts on a byte: read 8 bytes
           little-endian where the stream has them (else only the `bits` that exist), shift out 8 codes */
        const uint8_t *row = codes + n * k / 8 * bits;
        for (int64_t s = 0; s < k; s += group) {
            int64_t gi = g0 + s / group;
            int32_t z = zp[gi];
            float sc = scale[gi];
            switch (bits) { /* constant widths: the shifts fold and the loop vectorizes */
            case 2: decode8(row, s, group, 2, z, sc, w, codes + nbytes); break;
            case 3: decode8(row, s, group, 3, z, sc, w, codes + nbytes); break;
            case 5: decode8(row, s, group, 5, z, sc, w, codes + nbytes); break;
            case 6: decode8(row, s, group, 6, z, sc, w, codes + nbytes); break;
            case 7: decode8(row, s, group, 7, z, sc, w, codes + nbytes); break;
            default: decode8(row, s, group, bits, z, sc, w, codes + nbytes); break;
            }
        }
        return;
    }
#endif
    for (int64_t s = 0; s < k; s += group) {
        int64_t gi = g0 + s / group;
        int32_t z = zp[gi];
        float sc = scale[gi];
        for (int64_t j = 0; j < group; j++)
            w[s + j] = (float)(code_at(codes, nbytes, n * k + s + j, bits) - z) * sc;
    }
}

/* Row n of a signed int8 weight as float32 (mode 1): exact. */
GQ_CLONES
static void int8_row(const int8_t *codes, int64_t n, int64_t k, float *w) {
    const int8_t *row = codes + n * k;
    for (int64_t j = 0; j < k; j++) w[j] = (float)row[j];
}

/* sum_j a[j] * b[j], float32: LANES partial sums (vector registers), then a fixed tree. */
GQ_CLONES
static float dot(const float *a, const float *b, int64_t k) {
    float acc[LANES];
    memset(acc, 0, sizeof acc);
    int64_t j = 0;
    for (; j + LANES <= k; j += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[j + l] * b[j + l];
    for (int l = 0; j < k; j++, l++) acc[l] += a[j] * b[j];
    for (int width = LANES / 2; width >= 1; width /= 2)
        for (int l = 0; l < width; l++) acc[l] += acc[l + width];
    return acc[0];
}

/* The dot products of four input rows with one weight row: the weight is loaded once for four
   multiply-adds (one load per multiply-add was the bound of dot() for several rows). QUAD partial
   sums per row, then the same fixed tree as dot(). */
#define QUAD 32
GQ_CLONES
static void dot4(const float *x0, const float *x1, const float *x2, const float *x3, const float *w, int64_t k,
                 float *out) {
    float a0[QUAD], a1[QUAD], a2[QUAD], a3[QUAD];
    memset(a0, 0, sizeof a0);
    memset(a1, 0, sizeof a1);
    memset(a2, 0, sizeof a2);
    memset(a3, 0, sizeof a3);
    int64_t j = 0;
    for (; j + QUAD <= k; j += QUAD)
        for (int l = 0; l < QUAD; l++) {
            const float wv = w[j + l];
            a0[l] += x0[j + l] * wv;
            a1[l] += x1[j + l] * wv;
            a2[l] += x2[j + l] * wv;
            a3[l] += x3[j + l] * wv;
        }
    for (int l = 0; j < k; j++, l++) {
        a0[l] += x0[j] * w[j];
        a1[l] += x1[j] * w[j];
        a2[l] += x2[j] * w[j];
        a3[l] += x3[j] * w[j];
    }
    for (int width = QUAD / 2; width >= 1; width /= 2)
        for (int l = 0; l < width; l++) {
            a0[l] += a0[l + width];
            a1[l] += a1[l + width];
            a2[l] += a2[l + width];
            a3[l] += a3[l + width];
        }
    out[0] = a0[0];
    out[1] = a1[0];
    out[2] = a2[0];
    out[3] = a3[0];
}

/* y[i, r] for every input row i: four rows at a time, then one by one. */
static void row_outputs(const float *x, int64_t m, int64_t ldx, const float *w, int64_t k, int64_t n, int64_t r,
                        float scale, const float *bias, float *y) {
    int64_t i = 0;
    float v[4];
    for (; i + 4 <= m; i += 4) {
        dot4(x + i * ldx, x + (i + 1) * ldx, x + (i + 2) * ldx, x + (i + 3) * ldx, w, k, v);
        for (int q = 0; q < 4; q++) {
            const float t = v[q] * scale;
            y[(i + q) * n + r] = bias ? t + bias[r] : t;
        }
    }
    for (; i < m; i++) {
        const float t = dot(x + i * ldx, w, k) * scale;
        y[i * n + r] = bias ? t + bias[r] : t;
    }
}

/* y (M, N) float32 from x (M, K) float32 (row stride ldx). Returns 0, or -1 when a buffer cannot be had. */
int gq_wo_linear(const float *x, int64_t m, int64_t k, int64_t ldx, int64_t n, const uint8_t *codes, int64_t nbytes,
                 int bits, int mode, const float *scale, const uint8_t *zp, int64_t group, int64_t row_groups,
                 const float *bias, float *y) {
    int failed = 0;
#pragma omp parallel reduction(| : failed) if (n * k >= 65536)
    {
        float *w = (float *)malloc((size_t)k * sizeof(float));
        if (w == NULL) failed = 1;
        /* every thread meets the worksharing loop (OpenMP requires it); one without a buffer idles */
#pragma omp for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            if (w == NULL) continue;
            if (mode == 1) {
                int8_row((const int8_t *)codes, r, k, w);
                row_outputs(x, m, ldx, w, k, n, r, scale[r], bias, y);
            } else {
                dequant_row(codes, nbytes, bits, r, k, scale, zp, group, row_groups, w);
                row_outputs(x, m, ldx, w, k, n, r, 1.0f, bias, y);
            }
        }
        free(w);
    }
    return failed ? -1 : 0;
}

/* The dequantized weight (N, K) float32 of mode 0, bit-identical to the reference's. */
void gq_wo_dequantize(const uint8_t *codes, int64_t nbytes, int bits, int64_t n, int64_t k, const float *scale,
                      const uint8_t *zp, int64_t group, int64_t row_groups, float *out) {
#pragma omp parallel for schedule(static) if (n * k >= 65536)
    for (int64_t r = 0; r < n; r++) dequant_row(codes, nbytes, bits, r, k, scale, zp, group, row_groups, out + r * k);
}
