/*
 * glassquant VNNI Linear, the driver: one OpenMP parallel region per layer call.
 * Declarations, layouts, numerics contract and build rules: _vnni.h.
 *
 * Phase 1 (activations), split over 16-token units: quantize rows into the scratch rows
 * area (or take the caller's uint8 rows), and pack every unit that the token-block kernel
 * will read. The dynamic per-tensor mode first reduces min and max over all rows (each thread
 * one partial, then every thread combines them in the same order, so all agree) and chooses
 * the qparams once per call (gq_vnni_choose_qparams_u8).
 * Inputs under GQ_PARALLEL_MIN_ACT values are quantized by the calling thread before the
 * region starts (no barrier inside it).
 * Phase 2 (after a barrier), split over chunks of GQ_CHUNK_COLS output channels (dynamic
 * schedule, so a thread slowed by another process does not hold the others): full 16-token
 * blocks through the token-block kernel, the remaining tokens through the dot kernel, each
 * tile's epilogue while its accumulators are in cache. A thread writes only its chunks'
 * columns of y.
 * Threads: the calling thread's OpenMP team, shared with torch (see _fused.c); a->threads
 * caps it, and small problems run on the calling thread alone (a parallel region costs
 * microseconds). Returns 0, 1 when the input holds NaN or +-Inf (y unspecified; the caller
 * raises its named error), or -1 when this build has no VNNI kernels.
 */
#include "_vnni.h"

#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define GQ_MAX_THREADS 64
#define GQ_BLOCK_MIN_M 32          /* auto: the token-block kernel from this many tokens */
#define GQ_PARALLEL_MIN_MACS 400000 /* below this many multiply-adds, one thread */
#define GQ_PARALLEL_MIN_ACT 262144  /* below this many activations, quantize before the parallel region */
#ifndef GQ_STREAM_MIN_BYTES
#define GQ_STREAM_MIN_BYTES 4194304 /* float outputs from this size are written with streaming stores */
#endif

int gq_vnni_supported(void) {
#if GQ_HAVE_VNNI
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* rows area (M x K64) then blocks area (M x K64), both 64-byte aligned */
int64_t gq_vnni_work_bytes(int64_t m, int64_t k) { return 2 * m * gq_round_up(k, 64) + 64; }

#if GQ_HAVE_VNNI

typedef struct {
    gq_linear *a;
    int64_t k64, blocks; /* blocks: full 16-token blocks for the token-block kernel */
    uint8_t *rows, *packed;
    const uint8_t *in_rows; /* what the dot kernel reads: the rows area or the caller's uint8 */
    int64_t in_ld;
    int bad;
    float part_min[GQ_MAX_THREADS], part_max[GQ_MAX_THREADS];
    int part_bad[GQ_MAX_THREADS];
} gq_ctx;

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* per-tensor dynamic qparams: min/max over all rows, then gq_vnni_choose_qparams_u8 */
GQ_TARGET static int choose_dynamic(gq_ctx *c, float *scale, int32_t *zero_point) {
    gq_linear *a = c->a;
    const int tid = thread_id();
    float lo = 0.0f, hi = 0.0f;
    int bad = 0, seen = 0;
#pragma omp for schedule(static) nowait
    for (int64_t r = 0; r < a->m; ++r) {
        float mn, mx;
        bad |= gq_min_max_row((const float *)a->x + r * a->ldx, a->k, &mn, &mx);
        lo = seen && lo < mn ? lo : mn;
        hi = seen && hi > mx ? hi : mx;
        seen = 1;
    }
    c->part_min[tid] = seen ? lo : __builtin_inff();
    c->part_max[tid] = seen ? hi : -__builtin_inff();
    c->part_bad[tid] = bad;
#pragma omp barrier /* the one synchronisation of the min/max reduction */
    lo = __builtin_inff();
    hi = -__builtin_inff();
    bad = 0;
    for (int t = 0; t < team_size(); ++t) {
        lo = c->part_min[t] < lo ? c->part_min[t] : lo;
        hi = c->part_max[t] > hi ? c->part_max[t] : hi;
        bad |= c->part_bad[t];
    }
    if (bad) return 1;
    gq_vnni_choose_qparams_u8(lo, hi, 0, 255, a->reduce_range, scale, zero_point);
    return 0;
}

GQ_TARGET static void activations(gq_ctx *c) {
    gq_linear *a = c->a;
    const int64_t units = (a->m + 15) / 16, k64 = c->k64;
    float scale = a->x_scale, inv = 0.0f;
    int32_t zero_point = a->x_zero_point;
    if (a->act == GQ_ACT_DYNAMIC_U8 && choose_dynamic(c, &scale, &zero_point)) {
#pragma omp atomic write
        c->bad = 1; /* every thread gets here alike: the partials are shared */
        return;
    }
    if (a->act == GQ_ACT_DYNAMIC_U8 && thread_id() == 0) {
        a->x_scale = scale;
        a->x_zero_point = zero_point;
    }
    if (a->act != GQ_ACT_TOKEN_S8) inv = 1.0f / scale; /* f32(1 / scale), as pytorch.quantize */
    int bad = 0;
#pragma omp for schedule(static) nowait
    for (int64_t u = 0; u < units; ++u) {
        const int64_t r0 = 16 * u, r1 = r0 + 16 < a->m ? r0 + 16 : a->m;
        if (a->act == GQ_ACT_GIVEN_U8) {
            if (u < c->blocks) gq_pack_block((const uint8_t *)a->x + r0 * a->ldx, a->ldx, a->k, k64,
                                             c->packed + r0 * k64);
            continue;
        }
        for (int64_t r = r0; r < r1; ++r) {
            const float *x = (const float *)a->x + r * a->ldx;
            uint8_t *u8 = c->rows + r * k64;
            bad |= a->act == GQ_ACT_TOKEN_S8 ? gq_quantize_token_row(x, a->k, u8, k64, a->x_row_scale + r)
                                             : gq_quantize_tensor_row(x, a->k, u8, k64, inv, (float)zero_point);
        }
        if (u < c->blocks && !bad) gq_pack_block(c->rows + r0 * k64, k64, k64, k64, c->packed + r0 * k64);
    }
    if (bad) {
#pragma omp atomic write
        c->bad = 1;
    }
#pragma omp barrier /* one synchronisation: every row quantized and packed, c->bad final */
}

GQ_TARGET static gq_epi epilogue_settings(const gq_linear *a) {
    gq_epi e;
    memset(&e, 0, sizeof e);
    e.col_sum = a->col_sum;
    e.w_scale = a->w_scale;
    e.multiplier = a->multiplier;
    e.x_row_scale = a->x_row_scale;
    e.y = a->y;
    e.n = a->n;
    e.offset = a->act == GQ_ACT_TOKEN_S8 ? 128 : a->x_zero_point;
    e.out = a->out;
    e.relu = a->relu;
    e.bias_mode = a->bias_mode;
    e.x_scale = a->x_scale;
    e.bias_rcp = a->bias_rcp;
    e.y_scale = a->y_scale;
    e.y_zero_point = (float)a->y_zero_point;
    e.y_min = a->relu ? (float)a->y_zero_point : 0.0f;
    if (a->out == GQ_OUT_TOKEN || a->out == GQ_OUT_DYNAMIC || a->out == GQ_OUT_ONEDNN_U8) {
        e.bias = a->bias;
    } else {
        e.bias = a->bias_mode == GQ_BIAS_ADD ? a->bias_acc : a->bias_mode == GQ_BIAS_FMA ? a->bias : NULL;
    }
    /* streaming stores for float outputs bigger than the caches keep, on 64-byte aligned rows */
    e.stream = a->out != GQ_OUT_STATIC_U8 && a->out != GQ_OUT_ONEDNN_U8 && a->n % 16 == 0 && ((uintptr_t)a->y & 63) == 0 &&
               (double)a->m * (double)a->n * 4.0 >= GQ_STREAM_MIN_BYTES;
    return e;
}

GQ_TARGET static void linear_chunks(gq_ctx *c) {
    gq_linear *a = c->a;
    const gq_epi e = epilogue_settings(a);
    const int64_t chunks = (a->n + GQ_CHUNK_COLS - 1) / GQ_CHUNK_COLS;
    int32_t panel[GQ_CHUNK_COLS * GQ_PANEL_ROWS] __attribute__((aligned(64)));
    int32_t raw[16 * 16] __attribute__((aligned(64)));
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t ch = 0; ch < chunks; ++ch) {
        const int64_t n0 = ch * GQ_CHUNK_COLS, cols = a->n - n0 < GQ_CHUNK_COLS ? a->n - n0 : GQ_CHUNK_COLS;
        for (int64_t b = 0; b < c->blocks; b += 4) {
            const int64_t nb = c->blocks - b < 4 ? c->blocks - b : 4;
            const int64_t next = c->blocks - b - 4 < 4 ? c->blocks - b - 4 : 4; /* blocks of the next panel */
            gq_block_panel(c->packed + 16 * b * c->k64, nb, c->k64, a->w, n0, a->n, a->k, panel,
                           next > 0 ? c->packed + 16 * (b + 4) * c->k64 : NULL, next);
            gq_epilogue_panel(&e, 16 * b, nb, n0, panel);
        }
        for (int64_t r0 = 16 * c->blocks; r0 < a->m; r0 += 16) {
            const int64_t rows = a->m - r0 < 16 ? a->m - r0 : 16;
            for (int64_t t = 0; t < cols; t += 16) {
                gq_dot_block(c->in_rows + r0 * c->in_ld, c->in_ld, rows, a->w, n0 + t, a->n, a->k, raw);
                gq_epilogue_rows(&e, r0, rows, n0 + t, cols - t < 16 ? cols - t : 16, raw, 16);
            }
        }
    }
    if (e.stream) _mm_sfence(); /* streaming stores are weakly ordered: finish them before the join */
}

GQ_TARGET static void run(gq_ctx *c, int with_activations) {
    if (with_activations) activations(c);
    if (c->bad) return; /* read after the barrier: every thread sees the same value */
    linear_chunks(c);
}

#endif

int gq_vnni_linear(gq_linear *a) {
#if GQ_HAVE_VNNI
    if (a->m <= 0 || a->n <= 0 || a->k <= 0) return 0;
    gq_ctx c;
    memset(&c, 0, sizeof c);
    c.a = a;
    c.k64 = gq_round_up(a->k, 64);
    const int use_blocks = a->kernel == GQ_KERNEL_BLOCK || (a->kernel == GQ_KERNEL_AUTO && a->m >= GQ_BLOCK_MIN_M);
    c.blocks = use_blocks ? a->m / 16 : 0;
    c.rows = a->work;
    c.packed = a->work + a->m * c.k64;
    c.in_rows = a->act == GQ_ACT_GIVEN_U8 ? (const uint8_t *)a->x : c.rows;
    c.in_ld = a->act == GQ_ACT_GIVEN_U8 ? a->ldx : c.k64;
    const int64_t chunks = (a->n + GQ_CHUNK_COLS - 1) / GQ_CHUNK_COLS;
    int64_t nt = a->threads < 1 ? 1 : a->threads;
    nt = nt > GQ_MAX_THREADS ? GQ_MAX_THREADS : nt;
    nt = nt > chunks ? chunks : nt;
    if ((double)a->m * (double)a->n * (double)a->k < GQ_PARALLEL_MIN_MACS) nt = 1;
    if (nt == 1) {
        run(&c, 1);
        return c.bad;
    }
    /* small inputs are quantized by the calling thread first: every barrier inside a parallel
     * region can cost a scheduler time slice when the machine is oversubscribed */
    const int serial_activations = (double)a->m * (double)a->k < GQ_PARALLEL_MIN_ACT;
    if (serial_activations) activations(&c);
    if (c.bad) return c.bad;
#pragma omp parallel num_threads((int)nt)
    run(&c, !serial_activations);
    return c.bad;
#else
    (void)a;
    return -1;
#endif
}

int gq_vnni_run(const gq_linear *plan, const void *x, int64_t m, int64_t ldx, void *y, uint8_t *work,
                int64_t work_bytes, int32_t act, int32_t out, int32_t threads, int32_t kernel) {
    const int64_t need = gq_vnni_work_bytes(m, plan->k);
    if (work_bytes < need + 4 * m || ((uintptr_t)work & 63) != 0) return -2;
    gq_linear a = *plan;
    a.x = x;
    a.m = m;
    a.ldx = ldx;
    a.y = y;
    a.work = work;
    a.x_row_scale = (float *)(work + need);
    a.act = act;
    a.out = out;
    a.threads = threads;
    a.kernel = kernel;
    return gq_vnni_linear(&a);
}

#if GQ_HAVE_VNNI
/* 12 independent VPDPBUSD chains, `iters` times: the instruction's throughput bound */
GQ_TARGET static int32_t peak_loop(int64_t iters) {
    __m512i c[12];
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
    for (int i = 0; i < 12; ++i) c[i] = _mm512_set1_epi32(i);
    for (int64_t it = 0; it < iters; ++it) {
        for (int i = 0; i < 12; ++i) c[i] = gq_dpbusd(c[i], a, b);
        __asm__ volatile("" : "+v"(a)); /* keep the loop from being folded */
    }
    for (int i = 1; i < 12; ++i) c[0] = _mm512_add_epi32(c[0], c[i]);
    return _mm512_reduce_add_epi32(c[0]);
}
#endif

/* glassquant.dialects.pytorch.quantize per tensor to uint8 over a whole float32 buffer (n values):
 * q = clamp(rne(fma(x, f32(1 / scale), zero_point)), 0, 255), gq_quantize_tensor_row on chunks of
 * 4096, in parallel for large buffers. Returns 1 when x holds NaN or +-Inf (u is then unspecified),
 * -1 without the VNNI kernels (the caller keeps its torch path). */
int gq_vnni_quantize_u8(const float *x, int64_t n, uint8_t *u, float scale, int32_t zero_point) {
#if GQ_HAVE_VNNI
    const float inv = 1.0f / scale; /* f32(1 / scale), as pytorch.quantize */
    const int64_t chunk = 4096, chunks = (n + chunk - 1) / chunk;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (n >= GQ_PARALLEL_MIN_ACT)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t s = c * chunk, len = n - s < chunk ? n - s : chunk;
        bad |= gq_quantize_tensor_row(x + s, len, u + s, len, inv, (float)zero_point);
    }
    return bad;
#else
    (void)x, (void)n, (void)u, (void)scale, (void)zero_point;
    return -1;
#endif
}

/* im2col of one group for the convolution path, channels last: x uint8 (N, H, W, C) contiguous, out uint8
 * (N * OH * OW, kH * kW * C) with out[(b, y, x), (i, j, c)] = x_pad[b, y * sh + i * dh, x * sw + j * dw, c],
 * the padding reading as the zero point. The (i, j, c) column order matches a weight permuted to
 * (C_out, kH, kW, C) (nn/conv.py); each tap is one copy of C bytes, or of kW * C bytes when a row of taps
 * lies inside the image with dilation 1. Exact (a gather); rows in parallel for large outputs. */
/* n bytes from src to dst: a plain loop for the few-byte copies of small C (a call to memcpy per tap
 * costs more than the copy there), memcpy beyond */
static inline void copy_small(uint8_t *dst, const uint8_t *src, int64_t n) {
    if (n > 32) {
        memcpy(dst, src, (size_t)n);
        return;
    }
    for (int64_t l = 0; l < n; ++l) dst[l] = src[l];
}

static inline void fill_small(uint8_t *dst, uint8_t v, int64_t n) {
    if (n > 32) {
        memset(dst, v, (size_t)n);
        return;
    }
    for (int64_t l = 0; l < n; ++l) dst[l] = v;
}

void gq_im2col_u8(const uint8_t *x, int64_t n, int64_t h, int64_t w, int64_t c, int64_t kh, int64_t kw,
                  int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int32_t zero_point,
                  int64_t oh, int64_t ow, uint8_t *out) {
    const int64_t kdim = kh * kw * c;
    const uint8_t zp = (uint8_t)zero_point;
#pragma omp parallel for schedule(static) if (n * oh * ow * kdim >= GQ_PARALLEL_MIN_ACT)
    for (int64_t r = 0; r < n * oh; ++r) {
        const int64_t b = r / oh, y = r % oh;
        for (int64_t xo = 0; xo < ow; ++xo) {
            uint8_t *o = out + (r * ow + xo) * kdim;
            const int64_t iw0 = xo * sw - pw;
            const int inside_w = dw == 1 && iw0 >= 0 && iw0 + kw <= w;
            for (int64_t i = 0; i < kh; ++i) {
                const int64_t ih = y * sh - ph + i * dh;
                if (ih < 0 || ih >= h) {
                    fill_small(o, zp, kw * c);
                    o += kw * c;
                    continue;
                }
                const uint8_t *row = x + (b * h + ih) * w * c;
                if (inside_w) {
                    copy_small(o, row + iw0 * c, kw * c);
                    o += kw * c;
                    continue;
                }
                for (int64_t j = 0; j < kw; ++j, o += c) {
                    const int64_t iw = iw0 + j * dw;
                    if (iw < 0 || iw >= w) {
                        fill_small(o, zp, c);
                    } else {
                        copy_small(o, row + iw * c, c);
                    }
                }
            }
        }
    }
}

/* For benchmarks: run 12 * iters VPDPBUSD (each 64 multiply-adds = 128 int8 ops) on each of
 * `threads` threads; the caller times it. Returns the ops executed (0 without VNNI kernels). */
double gq_vnni_peak_ops(int64_t iters, int32_t threads) {
#if GQ_HAVE_VNNI
    volatile int32_t sink = 0;
#pragma omp parallel num_threads(threads < 1 ? 1 : threads)
    {
        const int32_t v = peak_loop(iters);
#pragma omp atomic
        sink += v;
    }
    (void)sink;
    return 12.0 * 128.0 * (double)iters * (double)(threads < 1 ? 1 : threads);
#else
    (void)iters;
    (void)threads;
    return 0.0;
#endif
}
