/*
 * glassquant AVX512-VNNI W8A8 Linear: the declarations shared by _vnni*.c.
 *
 * One call of gq_vnni_linear() runs a whole layer forward in one OpenMP parallel region:
 * quantize the activations (per token int8, per tensor uint8 with given qparams, or per
 * tensor uint8 with qparams chosen from the data: _vnni_quant.c), accumulate with VPDPBUSD
 * (uint8 x int8 -> int32: _vnni_gemm.c), then the dialect's float32 epilogue (torchao
 * rescale, x86 dynamic FMA, fbgemm static requantize: _vnni_epilogue.c). The numerics of
 * every step are written in the file that implements it. Build rules are those of
 * _fused.c: -std=c99 -ffp-contract=off, no fast-math; each float32 operation below is one
 * IEEE rounding (round to nearest even), FMAs only where written (_mm512_fmadd_ps, fmaf).
 *
 * Weight layout: none of its own. The kernels read the layer's int8 (N, K) row-major
 * weight in place -- the dot kernel loads 64 bytes of a row, the token-block kernel
 * broadcasts 4 bytes of a row -- so a layer stores N*K weight bytes plus its int32 column
 * sums, never a packed copy.
 *
 * Activation layouts (in the caller's scratch, gq_vnni_work_bytes):
 *   rows:   uint8 (M, K64), K64 = K rounded up to 64, zero padded: what the dot kernel reads.
 *   blocks: for each block of 16 rows, K64 / 4 groups of 64 bytes; group g holds
 *           u[16b + l, 4g .. 4g + 3] at bytes 4l .. 4l + 3 (l = 0..15): a 16 x 16 dword
 *           transpose of the rows, what the token-block kernel reads (lanes = tokens).
 *
 * Accumulators: every kernel forms raw[m, n] = sum_k u[m, k] * w[n, k] with u the uint8
 * activation (an int8 per-token value q is stored as u = q + 128) in int32 arithmetic that
 * wraps modulo 2**32; the exact accumulator is acc = raw - offset * col_sum[n] (offset =
 * 128, or the activation zero point), again modulo 2**32. Wrapping arithmetic is a ring
 * homomorphism, so acc is exact whenever the true value fits int32 -- which the layers
 * prove once per weight (worst_case_accumulator) before they take this path.
 */
#ifndef GQ_VNNI_H
#define GQ_VNNI_H

#include <stdint.h>

/* activation modes */
enum { GQ_ACT_TOKEN_S8 = 0, GQ_ACT_TENSOR_U8 = 1, GQ_ACT_DYNAMIC_U8 = 2, GQ_ACT_GIVEN_U8 = 3 };
/* output modes */
enum { GQ_OUT_TOKEN = 0, GQ_OUT_DYNAMIC = 1, GQ_OUT_STATIC_U8 = 2, GQ_OUT_STATIC_F32 = 3, GQ_OUT_ONEDNN_U8 = 4 };
/* static bias modes (fbgemm: per channel adds f32(b / f32(sx*sw)), per tensor fuses b * rcp + acc) */
enum { GQ_BIAS_NONE = 0, GQ_BIAS_ADD = 1, GQ_BIAS_FMA = 2 };
/* kernel choice: by shape, dot kernel only, token-block kernel for every full 16-row block */
enum { GQ_KERNEL_AUTO = 0, GQ_KERNEL_DOT = 1, GQ_KERNEL_BLOCK = 2 };

/* Everything one layer call needs. Pointers are to contiguous CPU tensors; sizes in elements.
 * Mirrored field for field by glassquant/kernels/vnni.py (_Args). */
typedef struct gq_linear {
    /* the layer (fixed) */
    const int8_t *w;           /* (N, K) int8, row stride K */
    const int32_t *col_sum;    /* (N,) sum_k w[n, k] */
    const float *w_scale;      /* (N,) weight scale per output channel (a per-tensor scale expanded) */
    const float *bias;         /* (N,) float32, or NULL */
    const float *multiplier;   /* static: (N,) f32(f32(sx * sw[n]) / sy) */
    const float *bias_acc;     /* static, GQ_BIAS_ADD: (N,) f32(b[n] / f32(sx * sw[n])) */
    int64_t n, k;
    /* this call */
    const void *x;             /* float32 (M, K), or uint8 for GQ_ACT_GIVEN_U8; row stride ldx */
    int64_t m, ldx;
    void *y;                   /* float32 or uint8 (M, N), row stride N */
    float *x_row_scale;        /* GQ_ACT_TOKEN_S8: (M,) per-token scales, written */
    uint8_t *work;             /* scratch of gq_vnni_work_bytes(m, k) bytes, 64-byte aligned */
    int32_t act, out, relu, reduce_range, bias_mode, threads, kernel;
    float x_scale;             /* per-tensor input scale (GQ_ACT_DYNAMIC_U8: written) */
    int32_t x_zero_point;      /* per-tensor input zero point (GQ_ACT_DYNAMIC_U8: written) */
    float bias_rcp;            /* static, GQ_BIAS_FMA: f32(1 / f64(f32(sx * sw))) */
    float y_scale;             /* static: output scale (float output: dequantize) */
    int32_t y_zero_point;      /* static: output zero point */
} gq_linear;

int gq_vnni_supported(void);
int64_t gq_vnni_work_bytes(int64_t m, int64_t k);
int gq_vnni_linear(gq_linear *a);
/* gq_vnni_linear on a copy of the layer's constant arguments with this call's fields set;
 * work: work_bytes of scratch, 64-byte aligned, at least gq_vnni_work_bytes(m, k) + 4 m
 * (the per-token scales go after the activations). Returns -2 when work is too small. */
int gq_vnni_run(const gq_linear *plan, const void *x, int64_t m, int64_t ldx, void *y, uint8_t *work,
                int64_t work_bytes, int32_t act, int32_t out, int32_t threads, int32_t kernel);
double gq_vnni_peak_ops(int64_t iters, int32_t threads);
int gq_vnni_quantize_u8(const float *x, int64_t n, uint8_t *u, float scale, int32_t zero_point);
void gq_im2col_u8(const uint8_t *x, int64_t n, int64_t h, int64_t w, int64_t c, int64_t kh, int64_t kw,
                  int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int32_t zero_point,
                  int64_t oh, int64_t ow, uint8_t *out);
void gq_vnni_choose_qparams_u8(float x_min, float x_max, int32_t qmin, int32_t qmax, int32_t reduce_range,
                               float *scale, int32_t *zero_point);

/* ---- internal: shared by the _vnni*.c files ---- */
#if defined(__GNUC__) && defined(__x86_64__)
#define GQ_HAVE_VNNI 1
#include <immintrin.h>
#define GQ_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")))
#define GQ_INLINE static inline __attribute__((always_inline)) GQ_TARGET

/* Block-kernel geometry: a panel is up to GQ_PANEL_ROWS tokens (4 blocks of 16) by one
 * chunk of GQ_CHUNK_COLS output channels; its raw accumulators live column-major in a
 * per-thread buffer (column j at j * GQ_PANEL_ROWS). */
#define GQ_PANEL_ROWS 64
#define GQ_CHUNK_COLS 96

/* acc += u8 a . s8 b per 32-bit lane (VPDPBUSD). Written as one asm instruction that updates
 * acc in place: GCC 12 compiles the intrinsic into register copies around every use. */
GQ_INLINE __m512i gq_dpbusd(__m512i acc, __m512i a, __m512i b) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(b));
    return acc;
}

static inline int64_t gq_round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

/* Transpose a 16 x 16 matrix of 32-bit lanes held in r[0..15] (row i = r[i]) in place:
 * 64 shuffles (unpack 32, unpack 64, two 128-bit lane shuffles). */
GQ_INLINE void gq_transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) { /* u[4i + c], 128-bit lane L: rows 4i..4i+3 of column 4L + c */
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int c = 0; c < 4; ++c) {
        const __m512i a = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88);
        const __m512i b = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
        const __m512i e = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
        const __m512i f = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_i32x4(a, e, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(b, f, 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(a, e, 0xdd);
        r[12 + c] = _mm512_shuffle_i32x4(b, f, 0xdd);
    }
}

static inline __mmask16 gq_mask16(int64_t count) {
    return count >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << count) - 1u);
}

static inline __mmask64 gq_mask64(int64_t count) {
    return count >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << count) - 1);
}

/* _vnni_quant.c: each returns 1 when the row holds NaN or +-Inf (outputs then unspecified) */
GQ_TARGET int gq_quantize_token_row(const float *x, int64_t k, uint8_t *u, int64_t k64, float *scale);
GQ_TARGET int gq_quantize_tensor_row(const float *x, int64_t k, uint8_t *u, int64_t k64, float inv_scale,
                                     float zero_point);
GQ_TARGET int gq_min_max_row(const float *x, int64_t k, float *x_min, float *x_max);
GQ_TARGET void gq_pack_block(const uint8_t *rows, int64_t ldr, int64_t k, int64_t k64, uint8_t *block);

/* _vnni_gemm.c: raw accumulators (see above) */
GQ_TARGET void gq_dot_block(const uint8_t *rows, int64_t ldr, int64_t nrows, const int8_t *w, int64_t n0,
                            int64_t n, int64_t k, int32_t *raw);
GQ_TARGET void gq_block_panel(const uint8_t *blocks, int64_t nblocks, int64_t k64, const int8_t *w, int64_t n0,
                              int64_t n, int64_t k, int32_t *panel, const uint8_t *next_blocks, int64_t next_nblocks);

/* _vnni_epilogue.c: what the epilogue reads, copied once per thread from gq_linear (locals do
 * not alias the output, so the compiler need not reload them after every store) */
typedef struct {
    const int32_t *col_sum;
    const float *w_scale, *multiplier;
    const float *bias;        /* token/dynamic: b; static: bias_acc (GQ_BIAS_ADD), b (GQ_BIAS_FMA), or NULL */
    const float *x_row_scale;
    void *y;
    int64_t n;
    int32_t offset, out, relu, bias_mode, stream;
    float x_scale, bias_rcp, y_scale, y_zero_point, y_min; /* y_min: zy under a fused ReLU, else 0 */
} gq_epi;

/* raw accumulators of rows m0.., columns n0.. (row-major, row stride ldr) -> the outputs y[m0.., n0..] */
GQ_TARGET void gq_epilogue_rows(const gq_epi *e, int64_t m0, int64_t rows, int64_t n0, int64_t cols,
                                const int32_t *raw, int64_t ldr);
/* a panel of nblocks x 16 tokens from m0 and the chunk of channels from n0 -> the outputs */
GQ_TARGET void gq_epilogue_panel(const gq_epi *e, int64_t m0, int64_t nblocks, int64_t n0, const int32_t *panel);
#else
#define GQ_HAVE_VNNI 0
#endif

#endif
