/*
 * glassquant VNNI Linear, activation side: choose qparams, quantize float32 rows to uint8,
 * pack 16-row blocks. Declarations, layouts and build rules: _vnni.h.
 *
 * Numerics (each bit-identical to the dialect function named; tests/unit/test_kernels_vnni.py):
 *   gq_vnni_choose_qparams_u8 -- glassquant.dialects.pytorch.choose_qparams (fbgemm's
 *     ChooseQuantizationParams): the same float64 steps in the same order, float32 where it
 *     rounds (the reciprocal test and the amplifier are float32 operations), nearbyint
 *     (half to even) for the zero point.
 *   gq_quantize_token_row -- glassquant.dialects.torchao.quantize_activation, one row:
 *     amax = max_k |x[k]| (exact: compared as bit patterns), scale = max(f32(amax / 127.5),
 *     2**-23), inv = f32(1 / scale), q = clamp(rne(f32(x * inv)), -128, 127); stored as the
 *     uint8 u = q + 128 (exact).
 *   gq_quantize_tensor_row -- glassquant.dialects.pytorch.quantize, per tensor to uint8:
 *     q = clamp(rne(fma(x, inv_scale, zero_point)), 0, 255): one fused multiply-add (the zero
 *     point is added before rounding), inv_scale = f32(1 / scale) formed by the caller.
 *   gq_min_max_row -- exact float32 min and max (no rounding happens).
 * Each row function returns 1 when its row holds NaN or +-Inf; its outputs are then unspecified
 * and the caller reports the input by name (the Python layer's error path).
 */
#include "_vnni.h"

#include <math.h>
#include <string.h>

/* torchao's int8 grid half-width (127 - (-128)) / 2 and Int8Tensor's eps = finfo(float32).eps */
#define GQ_TOKEN_DIVISOR 127.5f
#define GQ_TOKEN_EPS 1.1920928955078125e-07f

void gq_vnni_choose_qparams_u8(float x_min_f, float x_max_f, int32_t qmin, int32_t qmax, int32_t reduce_range,
                               float *scale_out, int32_t *zero_point_out) {
    const double small = (double)(float)6.1e-5; /* SMALL_SCALE_THRESHOLD, a float32 value */
    double x_min = x_min_f, x_max = x_max_f;
    if (reduce_range) { /* uint8 [0, 255] -> [0, 127]; both bounds are >= 0 here */
        qmin /= 2;
        qmax /= 2;
    }
    x_min = (0.0 < x_min) ? 0.0 : x_min; /* Python min(x_min, 0.0) */
    x_max = (0.0 > x_max) ? 0.0 : x_max; /* Python max(x_max, 0.0) */
    double scale = (x_max - x_min) / (double)(qmax - qmin);
    const float s32 = (float)scale;
    if (s32 == 0.0f || isinf(1.0f / s32)) scale = 0.1;
    if (scale < small) {
        const float org_scale = (float)scale;
        scale = small;
        if (x_min == 0.0) {
            x_max = (double)(float)(small * (double)(qmax - qmin));
        } else if (x_max == 0.0) {
            x_min = (double)(float)(-small * (double)(qmax - qmin));
        } else {
            const float amplifier = (float)small / org_scale;
            x_min = (double)((float)x_min * amplifier);
            x_max = (double)((float)x_max * amplifier);
        }
    }
    const double zp_from_min = qmin - x_min / scale;
    const double zp_from_max = qmax - x_max / scale;
    const double err_min = fabs((double)qmin) - fabs(x_min / scale);
    const double err_max = fabs((double)qmax) - fabs(x_max / scale);
    const double initial = err_min < err_max ? zp_from_min : zp_from_max;
    int32_t zp;
    if (initial < qmin) {
        zp = qmin;
    } else if (initial > qmax) {
        zp = qmax;
    } else {
        zp = (int32_t)nearbyint(initial); /* default rounding mode: half to even */
    }
    *scale_out = (float)scale;
    *zero_point_out = zp;
}

#if GQ_HAVE_VNNI

#define GQ_RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define GQ_NAN_OR_INF 0x99 /* fpclass: QNaN | +Inf | -Inf | SNaN */

GQ_TARGET int gq_quantize_token_row(const float *x, int64_t k, uint8_t *u, int64_t k64, float *scale) {
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
    __m512i amax = _mm512_setzero_si512();
    for (int64_t i = 0; i < k; i += 16) {
        __m512i bits = _mm512_maskz_loadu_epi32(gq_mask16(k - i), x + i);
        amax = _mm512_max_epu32(amax, _mm512_and_si512(bits, abs_mask));
    }
    const uint32_t a = (uint32_t)_mm512_reduce_max_epu32(amax);
    if (a >= 0x7f800000u) return 1; /* Inf or NaN somewhere in the row */
    float amax_f;
    memcpy(&amax_f, &a, sizeof amax_f);
    float s = amax_f / GQ_TOKEN_DIVISOR;
    s = s < GQ_TOKEN_EPS ? GQ_TOKEN_EPS : s;
    *scale = s;
    const __m512 inv = _mm512_set1_ps(1.0f / s);
    const __m512 lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
    const __m512i shift = _mm512_set1_epi32(128);
    for (int64_t i = 0; i < k; i += 16) {
        const __mmask16 mk = gq_mask16(k - i);
        __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + i), inv), GQ_RNE);
        v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), shift); /* exact: integer-valued */
        _mm_mask_storeu_epi8(u + i, mk, _mm512_cvtepi32_epi8(q));
    }
    if (k64 > k) memset(u + k, 0, (size_t)(k64 - k));
    return 0;
}

GQ_TARGET int gq_quantize_tensor_row(const float *x, int64_t k, uint8_t *u, int64_t k64, float inv_scale,
                                     float zero_point) {
    const __m512 inv = _mm512_set1_ps(inv_scale), zp = _mm512_set1_ps(zero_point);
    const __m512 lo = _mm512_setzero_ps(), hi = _mm512_set1_ps(255.0f);
    __mmask16 bad = 0;
    for (int64_t i = 0; i < k; i += 16) {
        const __mmask16 mk = gq_mask16(k - i);
        const __m512 xv = _mm512_maskz_loadu_ps(mk, x + i);
        bad |= _mm512_mask_fpclass_ps_mask(mk, xv, GQ_NAN_OR_INF);
        __m512 v = _mm512_roundscale_ps(_mm512_fmadd_ps(xv, inv, zp), GQ_RNE);
        v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        _mm_mask_storeu_epi8(u + i, mk, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
    if (k64 > k) memset(u + k, 0, (size_t)(k64 - k));
    return bad != 0;
}

GQ_TARGET int gq_min_max_row(const float *x, int64_t k, float *x_min, float *x_max) {
    __m512 mn = _mm512_set1_ps(INFINITY), mx = _mm512_set1_ps(-INFINITY);
    __mmask16 bad = 0;
    for (int64_t i = 0; i < k; i += 16) {
        const __mmask16 mk = gq_mask16(k - i);
        const __m512 xv = _mm512_maskz_loadu_ps(mk, x + i);
        bad |= _mm512_mask_fpclass_ps_mask(mk, xv, GQ_NAN_OR_INF);
        mn = _mm512_mask_min_ps(mn, mk, mn, xv);
        mx = _mm512_mask_max_ps(mx, mk, mx, xv);
    }
    *x_min = _mm512_reduce_min_ps(mn);
    *x_max = _mm512_reduce_max_ps(mx);
    return bad != 0;
}

GQ_TARGET void gq_pack_block(const uint8_t *rows, int64_t ldr, int64_t k, int64_t k64, uint8_t *block) {
    for (int64_t c = 0; c < k64; c += 64) {
        const __mmask64 mk = gq_mask64(k - c); /* bytes past k read as 0 */
        __m512i r[16];
        for (int l = 0; l < 16; ++l) r[l] = _mm512_maskz_loadu_epi8(mk, rows + l * ldr + c);
        gq_transpose16(r); /* r[j]: dword j of each of the 16 rows = group c/4 + j */
        for (int j = 0; j < 16; ++j) _mm512_store_si512(block + c * 16 + j * 64, r[j]);
    }
}

#endif
