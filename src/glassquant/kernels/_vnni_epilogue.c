/*
 * glassquant VNNI Linear, the float32 epilogue: raw accumulators -> the layer's outputs,
 * 16 output channels per vector. Declarations, layouts and build rules: _vnni.h.
 *
 * First the exact accumulator, acc = raw - offset * col_sum[n] (int32, wrapping: exact, see
 * _vnni.h), then f = f32(acc) (one rounding, exact below 2**24), then per output mode, each
 * a single float32 rounding per operation in exactly this order (bit-identical to the
 * dialect named; tests/unit/test_kernels_vnni.py):
 *   GQ_OUT_TOKEN (glassquant.dialects.torchao.dynamic_output):
 *     y = f32(f32(f * sx[m]) * sw[n]); y = f32(y + b[n]) when there is a bias.
 *   GQ_OUT_DYNAMIC (glassquant.dialects.fbgemm.dynamic_output):
 *     s = f32(sx * sw[n]); y = fma(f, s, b[n]) (one rounding), or f32(f * s) with no bias.
 *   GQ_OUT_STATIC_* (glassquant.dialects.fbgemm.requantize):
 *     v = f32(f + bias_acc[n]) (per channel), fma(b[n], bias_rcp, f) (per tensor), or f;
 *     r = rne(f32(v * multiplier[n])); q = clamp(r + zy, lo, 255) with lo = zy under a fused
 *     ReLU, else 0 (r + zy is exact below 2**24 and beyond it the clamp decides alone);
 *     stored as uint8, or dequantized: y = f32((q - zy) * y_scale) (glassquant.affine.dequantize).
 *   GQ_OUT_ONEDNN_U8 (glassquant.nn.conv.onednn_conv_requantize, oneDNN's int8 convolution):
 *     v = f32(f32(f * sx') * sw[n]); v = f32(v + b[n]) with a bias; v = f32(f32(v * inv_sy) + zy);
 *     q = clamp(rne(v), lo, 255), lo = zy under a fused ReLU, else 0; sx' and inv_sy are the scales'
 *     reciprocal round trips, formed once by the caller (gq_epi.x_scale, gq_epi.y_scale).
 * ReLU on float outputs is max(0, y) keeping -0.0, like torch.clamp_min(y, 0).
 * Stores: float32 rows may be written with streaming (non-temporal) stores when the caller
 * sets gq_epi.stream (large outputs, 64-byte aligned rows): no read-for-ownership of lines
 * that would not stay in cache anyway. The driver fences them before the region ends.
 */
#include "_vnni.h"

#if GQ_HAVE_VNNI

/* the constants of one group of 16 output channels n0 .. n0 + 15 (lanes past N are zero) */
typedef struct {
    __m512i offset_cs; /* offset * col_sum[n], wrapping */
    __m512 scale;      /* token: sw[n]; dynamic: f32(sx * sw[n]); static: multiplier[n] */
    __m512 bias;       /* token/dynamic: b[n]; static: bias_acc[n] (add) or b[n] (fma) */
    __mmask16 mk;
} gq_cols;

GQ_INLINE gq_cols load_cols(const gq_epi *e, int64_t n0, __mmask16 mk) {
    gq_cols c;
    c.mk = mk;
    c.offset_cs = _mm512_mullo_epi32(_mm512_set1_epi32(e->offset), _mm512_maskz_loadu_epi32(mk, e->col_sum + n0));
    c.bias = e->bias ? _mm512_maskz_loadu_ps(mk, e->bias + n0) : _mm512_setzero_ps();
    if (e->out == GQ_OUT_TOKEN || e->out == GQ_OUT_ONEDNN_U8) {
        c.scale = _mm512_maskz_loadu_ps(mk, e->w_scale + n0);
    } else if (e->out == GQ_OUT_DYNAMIC) {
        c.scale = _mm512_mul_ps(_mm512_set1_ps(e->x_scale), _mm512_maskz_loadu_ps(mk, e->w_scale + n0));
    } else {
        c.scale = _mm512_maskz_loadu_ps(mk, e->multiplier + n0);
    }
    return c;
}

GQ_INLINE void store_f32(const gq_epi *e, float *p, __mmask16 mk, __m512 y) {
    if (e->stream && mk == 0xffff) {
        _mm512_stream_ps(p, y);
    } else {
        _mm512_mask_storeu_ps(p, mk, y);
    }
}

/* token m, channels n0 .. n0 + 15 of the raw accumulators -> y[m, n0 ..] */
GQ_INLINE void epilogue16(const gq_epi *e, const gq_cols *c, int64_t m, int64_t n0, __m512i raw) {
    const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(raw, c->offset_cs));
    const int64_t at = m * e->n + n0;
    if (e->out == GQ_OUT_TOKEN) {
        __m512 y = _mm512_mul_ps(_mm512_mul_ps(f, _mm512_set1_ps(e->x_row_scale[m])), c->scale);
        if (e->bias) y = _mm512_add_ps(y, c->bias);
        if (e->relu) y = _mm512_max_ps(_mm512_setzero_ps(), y); /* MAXPS returns the 2nd operand on +-0 ties */
        store_f32(e, (float *)e->y + at, c->mk, y);
        return;
    }
    if (e->out == GQ_OUT_ONEDNN_U8) {
        __m512 v = _mm512_mul_ps(_mm512_mul_ps(f, _mm512_set1_ps(e->x_scale)), c->scale);
        if (e->bias) v = _mm512_add_ps(v, c->bias);
        v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(e->y_scale)), _mm512_set1_ps(e->y_zero_point));
        const __m512 r = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m512 q = _mm512_min_ps(_mm512_max_ps(r, _mm512_set1_ps(e->y_min)), _mm512_set1_ps(255.0f));
        _mm_mask_storeu_epi8((uint8_t *)e->y + at, c->mk, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q)));
        return;
    }
    if (e->out == GQ_OUT_DYNAMIC) {
        __m512 y = e->bias ? _mm512_fmadd_ps(f, c->scale, c->bias) : _mm512_mul_ps(f, c->scale);
        if (e->relu) y = _mm512_max_ps(_mm512_setzero_ps(), y);
        store_f32(e, (float *)e->y + at, c->mk, y);
        return;
    }
    __m512 v = f;
    if (e->bias_mode == GQ_BIAS_ADD) {
        v = _mm512_add_ps(f, c->bias);
    } else if (e->bias_mode == GQ_BIAS_FMA) {
        v = _mm512_fmadd_ps(c->bias, _mm512_set1_ps(e->bias_rcp), f);
    }
    const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v, c->scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 zy = _mm512_set1_ps(e->y_zero_point);
    const __m512 q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, zy), _mm512_set1_ps(e->y_min)),
                                   _mm512_set1_ps(255.0f));
    if (e->out == GQ_OUT_STATIC_U8) {
        _mm_mask_storeu_epi8((uint8_t *)e->y + at, c->mk, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q)));
    } else {
        store_f32(e, (float *)e->y + at, c->mk, _mm512_mul_ps(_mm512_sub_ps(q, zy), _mm512_set1_ps(e->y_scale)));
    }
}

GQ_TARGET void gq_epilogue_rows(const gq_epi *e, int64_t m0, int64_t rows, int64_t n0, int64_t cols,
                                const int32_t *raw, int64_t ldr) {
    for (int64_t c = 0; c < cols; c += 16) {
        const gq_cols cc = load_cols(e, n0 + c, gq_mask16(cols - c));
        for (int64_t r = 0; r < rows; ++r) epilogue16(e, &cc, m0 + r, n0 + c, _mm512_loadu_si512(raw + r * ldr + c));
    }
}

GQ_TARGET void gq_epilogue_panel(const gq_epi *e, int64_t m0, int64_t nblocks, int64_t n0, const int32_t *panel) {
#ifdef GQ_SKIP_EPILOGUE
    return;
#endif
    const int64_t cols = e->n - n0 < GQ_CHUNK_COLS ? e->n - n0 : GQ_CHUNK_COLS;
    for (int64_t c = 0; c < cols; c += 16) {
        const gq_cols cc = load_cols(e, n0 + c, gq_mask16(cols - c));
        for (int64_t v = 0; v < nblocks; ++v) {
            __m512i r[16]; /* r[j]: channel c + j, tokens 16v .. 16v + 15 */
            for (int j = 0; j < 16; ++j) r[j] = _mm512_load_si512(panel + (c + j) * GQ_PANEL_ROWS + 16 * v);
            gq_transpose16(r); /* r[i]: token 16v + i, channels c .. c + 15 */
            for (int i = 0; i < 16; ++i) epilogue16(e, &cc, m0 + 16 * v + i, n0 + c, r[i]);
        }
    }
}

#endif
