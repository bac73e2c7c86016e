/*
 * glassquant fused CPU passes for the per-token (torchao) dynamic W8A8 Linear.
 *
 * The eager path quantizes activations and rescales accumulators in about a dozen
 * separate torch element-wise passes; these two functions do the same arithmetic in one
 * pass each, with the same float32 operations in the same order, so the results are
 * bit-identical to glassquant.dialects.torchao (tests/unit/test_kernels_fused.py).
 *
 * Numerics contract (must stay true; the build uses -std=c99 -ffp-contract=off and no
 * fast-math, so every float operation below is one IEEE float32 rounding, round to
 * nearest even, and nothing is contracted into an FMA or reassociated):
 *
 *   gq_quantize_rows: for each row m of x (float32, M x K, row stride ldx):
 *     amax      = max_k |x[m,k]|                       exact (compared as bit patterns)
 *     scale[m]  = max(f32(amax / divisor), eps)        one float32 division, then clamp
 *     inv       = f32(1 / scale[m])                    one float32 division
 *     q[m,k]    = clamp(rne(f32(x[m,k] * inv)), qmin, qmax)   as int8
 *   returns 0, or 1 if any x is NaN or +-Inf (the caller then raises its named error;
 *   q and scale are unspecified in that case).
 *
 *   gq_rescale_rows: y[m,n] = f32(f32(f32(acc[m,n]) * sx[m]) * sw[n]); then
 *     y += b[n] (one float32 add) when b is not NULL; then y = (y < 0 ? 0 : y) when relu.
 *     sw has N entries, or one (sw_stride 0). y may be acc itself (the same bytes read as
 *     float32): each element is read before its own slot is written, and no other.
 *
 * Threads: rows are split with OpenMP. At run time the library shares PyTorch's OpenMP
 * runtime (torch/lib/libgomp.so.1 has the same soname and is loaded first), so it uses
 * torch.set_num_threads' thread count and pool, not a second pool.
 * No allocation, no globals, no I/O.
 */
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GQ_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GQ_CLONES
#endif

/* |x| as an order-preserving unsigned key: finite |x| < 0x7f800000 <= Inf, NaN. */
static inline uint32_t abs_bits(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u & 0x7fffffffu;
}

static inline float bits_float(uint32_t u) {
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

GQ_CLONES
static void quantize_row(const float *restrict x, int64_t k, int8_t *restrict q, float *restrict scale,
                         float qmin, float qmax, float eps, float divisor, int *restrict bad) {
    uint32_t amax = 0;
    for (int64_t i = 0; i < k; ++i) {
        uint32_t a = abs_bits(x[i]);
        amax = a > amax ? a : amax;
    }
    if (amax >= 0x7f800000u) { /* Inf or NaN somewhere in the row */
        *bad = 1;
        *scale = 0.0f;
        return;
    }
    float s = bits_float(amax) / divisor;
    s = s < eps ? eps : s; /* torch.clamp(min=eps); s is not NaN here */
    *scale = s;
    const float inv = 1.0f / s;
    for (int64_t i = 0; i < k; ++i) {
        float r = __builtin_rintf(x[i] * inv); /* one product rounding, then ties to even */
        r = r < qmin ? qmin : r;
        r = r > qmax ? qmax : r;
        q[i] = (int8_t)r;
    }
}

int gq_quantize_rows(const float *x, int64_t m, int64_t k, int64_t ldx, int8_t *q, float *scale,
                     int32_t qmin, int32_t qmax, float eps, float divisor) {
    int bad = 0;
    const float fmin = (float)qmin, fmax = (float)qmax;
#pragma omp parallel for schedule(static) reduction(| : bad) if (m * k >= 32768)
    for (int64_t r = 0; r < m; ++r) {
        int row_bad = 0;
        quantize_row(x + r * ldx, k, q + r * k, scale + r, fmin, fmax, eps, divisor, &row_bad);
        bad |= row_bad;
    }
    return bad;
}

GQ_CLONES
static void rescale_row(const int32_t *acc, int64_t n, float sx, const float *restrict sw,
                        int64_t sw_stride, const float *restrict bias, int relu, float *y) {
    if (sw_stride == 0) {
        const float s = sw[0];
        for (int64_t i = 0; i < n; ++i) y[i] = ((float)acc[i] * sx) * s;
    } else {
        for (int64_t i = 0; i < n; ++i) y[i] = ((float)acc[i] * sx) * sw[i];
    }
    if (bias) {
        for (int64_t i = 0; i < n; ++i) y[i] = y[i] + bias[i];
    }
    if (relu) {
        for (int64_t i = 0; i < n; ++i) y[i] = y[i] < 0.0f ? 0.0f : y[i];
    }
}

void gq_rescale_rows(const int32_t *acc, int64_t m, int64_t n, const float *sx, const float *sw,
                     int64_t sw_stride, const float *bias, int relu, float *y) {
#pragma omp parallel for schedule(static) if (m * n >= 32768)
    for (int64_t r = 0; r < m; ++r) {
        rescale_row(acc + r * n, n, sx[r], sw, sw_stride, bias, relu, y + r * n);
    }
}
