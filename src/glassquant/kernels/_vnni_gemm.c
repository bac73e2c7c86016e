/*
 * glassquant VNNI Linear, the integer part: raw[m, n] = sum_k u[m, k] * w[n, k], uint8 x int8,
 * int32 wrapping (exact modulo 2**32; see _vnni.h for why that is exact after the offset).
 * VPDPBUSD adds four u8 x s8 products to each int32 lane with no intermediate saturation.
 *
 * Two kernels, both reading the row-major int8 weight in place:
 *   dot kernel (few tokens): a tile of MR tokens x NR channels (MR * NR = 16) keeps one
 *     16-lane accumulator per (token, channel) -- lane l sums k = 64i + 4l .. 4l + 3 -- and
 *     reduces the 16 accumulators to one vector at the end (hsum16). Loads 64 bytes of an
 *     activation row and of a weight row per step; memory-bound weight streaming.
 *   token-block kernel (many tokens): lanes are 16 tokens of a packed block (_vnni.h); one
 *     weight dword w[n, 4g .. 4g+3] is broadcast to all lanes, so each accumulator already
 *     holds 16 finished dot products -- no reduction, the epilogue transposes 16 x 16 tiles.
 *     Tile: up to 4 blocks (64 tokens) x 6 channels = 24 accumulators; K is walked in passes
 *     of GQ_KC_GROUPS groups so a 64-token activation slice stays in L1 while a chunk's 16
 *     tiles reuse it; partial sums wait in the per-thread panel between passes. Each tile
 *     prefetches into L2 the next pass's bytes of its 6 weight rows (rows of a 4 KiB stride
 *     defeat the hardware streamer: 25 -> 14 ms at M=64, K=4096, N=11008) and a 1/16 share of
 *     the activations the next pass or panel reads.
 * K tails: the dot kernel masks its last 64-byte step (masked-off bytes read as 0, never
 * fault); the block kernel's last partial group reads only K mod 4 weight bytes (packed
 * activations are zero there). Channels past N read row N - 1 and are never stored.
 */
#include "_vnni.h"

#include <string.h>

#if GQ_HAVE_VNNI

#ifndef GQ_KC_GROUPS
#define GQ_KC_GROUPS 128 /* 512 bytes of K per pass */
#endif
#ifndef GQ_PREFETCH
#define GQ_PREFETCH 1
#endif
#ifndef GQ_PREFETCH_X
#define GQ_PREFETCH_X 1
#endif


#define GQ_TILE_COLS 6

/* lane j of the result = the sum of the 16 lanes of c[j] (wrapping), 45 shuffles and adds */
GQ_INLINE __m512i hsum16(const __m512i c[16]) {
    __m512i p[8], q[4], r[2];
    for (int i = 0; i < 8; ++i)
        p[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(c[2 * i], c[2 * i + 1]),
                                _mm512_unpackhi_epi32(c[2 * i], c[2 * i + 1]));
    for (int i = 0; i < 4; ++i) /* 128-bit lane L of q[i]: lane-L partial sums of c[4i .. 4i+3] */
        q[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(p[2 * i], p[2 * i + 1]),
                                _mm512_unpackhi_epi64(p[2 * i], p[2 * i + 1]));
    for (int i = 0; i < 2; ++i)
        r[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(q[2 * i], q[2 * i + 1], 0x88),
                                _mm512_shuffle_i32x4(q[2 * i], q[2 * i + 1], 0xdd));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(r[0], r[1], 0x88), _mm512_shuffle_i32x4(r[0], r[1], 0xdd));
}

/* mr tokens x nr channels (mr * nr == 16) over all of K -> raw[i * 16 + col0 + j] */
GQ_INLINE void dot_tile(const int mr, const int nr, const uint8_t *const *x, const int8_t *const *w, int64_t k,
                        int32_t *raw, int col0) {
    __m512i c[16];
    for (int i = 0; i < 16; ++i) c[i] = _mm512_setzero_si512();
    int64_t kk = 0;
    for (; kk + 64 <= k; kk += 64) {
        __m512i xv[4];
        for (int i = 0; i < mr; ++i) xv[i] = _mm512_loadu_si512(x[i] + kk);
        for (int j = 0; j < nr; ++j) {
            const __m512i wv = _mm512_loadu_si512(w[j] + kk);
            for (int i = 0; i < mr; ++i) c[i * nr + j] = gq_dpbusd(c[i * nr + j], xv[i], wv);
        }
    }
    if (kk < k) {
        const __mmask64 mk = gq_mask64(k - kk);
        __m512i xv[4];
        for (int i = 0; i < mr; ++i) xv[i] = _mm512_maskz_loadu_epi8(mk, x[i] + kk);
        for (int j = 0; j < nr; ++j) {
            const __m512i wv = _mm512_maskz_loadu_epi8(mk, w[j] + kk);
            for (int i = 0; i < mr; ++i) c[i * nr + j] = gq_dpbusd(c[i * nr + j], xv[i], wv);
        }
    }
    int32_t sums[16];
    _mm512_storeu_si512(sums, hsum16(c)); /* lane i * nr + j: token i, channel j */
    for (int i = 0; i < mr; ++i) memcpy(raw + i * 16 + col0, sums + i * nr, (size_t)nr * sizeof(int32_t));
}

/* nrows (<= 16) tokens x 16 channels n0.. -> raw (nrows, 16), row stride 16 */
GQ_TARGET void gq_dot_block(const uint8_t *rows, int64_t ldr, int64_t nrows, const int8_t *w, int64_t n0,
                            int64_t n, int64_t k, int32_t *raw) {
    const int8_t *wp[16];
    for (int j = 0; j < 16; ++j) wp[j] = w + (n0 + j < n ? n0 + j : n - 1) * k;
    int64_t r = 0;
    for (; r + 4 <= nrows; r += 4) {
        const uint8_t *x[4] = {rows + r * ldr, rows + (r + 1) * ldr, rows + (r + 2) * ldr, rows + (r + 3) * ldr};
        for (int s = 0; s < 4; ++s) dot_tile(4, 4, x, wp + 4 * s, k, raw + r * 16, 4 * s);
    }
    for (; r + 2 <= nrows; r += 2) {
        const uint8_t *x[2] = {rows + r * ldr, rows + (r + 1) * ldr};
        for (int s = 0; s < 2; ++s) dot_tile(2, 8, x, wp + 8 * s, k, raw + r * 16, 8 * s);
    }
    if (r < nrows) {
        const uint8_t *x[1] = {rows + r * ldr};
        dot_tile(1, 16, x, wp, k, raw + r * 16, 0);
    }
}

/* one group g of mv blocks x 6 channels: `bytes` (4, or the K tail) weight bytes per channel.
 * A macro, not a function: GCC keeps the accumulator array in registers only when the loop
 * body is written inside the function that owns it. */
#define GQ_BLOCK_STEP(g, bytes)                                                               \
    do {                                                                                      \
        __m512i xv[4];                                                                        \
        for (int v = 0; v < mv; ++v) xv[v] = _mm512_load_si512(xb + v * bstride + (g) * 64);  \
        for (int j = 0; j < GQ_TILE_COLS; ++j) {                                              \
            int32_t d = 0;                                                                    \
            memcpy(&d, w[j] + 4 * (g), (size_t)(bytes));                                      \
            const __m512i bc = _mm512_set1_epi32(d);                                          \
            for (int v = 0; v < mv; ++v) c[v][j] = gq_dpbusd(c[v][j], xv[v], bc);             \
        }                                                                                     \
    } while (0)

/* mv blocks (16 tokens each) x 6 channels over groups [g0, g1), then the partial group g1 when
 * tail > 0 (its first `tail` weight bytes); accumulates into panel (column j at j * PANEL_ROWS) */
GQ_INLINE void block_tile(const int mv, const uint8_t *xb, int64_t bstride, const int8_t *const *w, int64_t g0,
                          int64_t g1, int64_t tail, int32_t *panel, int first, const uint8_t *xpf) {
    __m512i c[4][GQ_TILE_COLS];
    for (int v = 0; v < mv; ++v)
        for (int j = 0; j < GQ_TILE_COLS; ++j)
            c[v][j] = first ? _mm512_setzero_si512() : _mm512_load_si512(panel + j * GQ_PANEL_ROWS + 16 * v);
    /* four groups per step; once per step, prefetch into L2 one line of the next activations
     * and, every 16 groups, one line per channel of the next pass's weights */
    int64_t g = g0;
    for (; g + 4 <= g1; g += 4) {
        if (GQ_PREFETCH && ((g - g0) & 15) == 0)
            for (int j = 0; j < GQ_TILE_COLS; ++j)
                _mm_prefetch((const char *)(w[j] + 4 * g + 4 * GQ_KC_GROUPS), _MM_HINT_T1);
        if (GQ_PREFETCH_X && xpf) _mm_prefetch((const char *)(xpf + (g - g0) * 16), _MM_HINT_T1);
        GQ_BLOCK_STEP(g, 4);
        GQ_BLOCK_STEP(g + 1, 4);
        GQ_BLOCK_STEP(g + 2, 4);
        GQ_BLOCK_STEP(g + 3, 4);
    }
    for (; g < g1; ++g) GQ_BLOCK_STEP(g, 4);
    if (tail) GQ_BLOCK_STEP(g1, tail);
    for (int v = 0; v < mv; ++v)
        for (int j = 0; j < GQ_TILE_COLS; ++j) _mm512_store_si512(panel + j * GQ_PANEL_ROWS + 16 * v, c[v][j]);
}

/* nblocks (1..4) packed blocks x the chunk of GQ_CHUNK_COLS channels n0.. -> panel */
GQ_TARGET void gq_block_panel(const uint8_t *blocks, int64_t nblocks, int64_t k64, const int8_t *w, int64_t n0,
                              int64_t n, int64_t k, int32_t *panel, const uint8_t *next_blocks, int64_t next_nblocks) {
    const int64_t bstride = k64 * 16, full = k / 4, tail = k % 4;
    for (int64_t g0 = 0;; g0 += GQ_KC_GROUPS) {
        const int64_t g1 = g0 + GQ_KC_GROUPS < full ? g0 + GQ_KC_GROUPS : full;
        const int last = g1 == full;
        const int64_t t = last ? tail : 0;
        for (int64_t c0 = 0; c0 < GQ_CHUNK_COLS && n0 + c0 < n; c0 += GQ_TILE_COLS) {
            const int8_t *wp[GQ_TILE_COLS];
            for (int j = 0; j < GQ_TILE_COLS; ++j) wp[j] = w + (n0 + c0 + j < n ? n0 + c0 + j : n - 1) * k;
            int32_t *p = panel + c0 * GQ_PANEL_ROWS;
            /* prefetch (into L2) a 1/16 share of the activations the next pass or panel reads */
            const int64_t ti = c0 / GQ_TILE_COLS, pb = ti / 4;
            const uint8_t *xpf = NULL;
            if (!last && pb < nblocks) {
                xpf = blocks + pb * bstride + (g1 * 64) + (ti % 4) * (GQ_KC_GROUPS / 4) * 64;
            } else if (last && next_blocks && pb < next_nblocks) {
                xpf = next_blocks + pb * bstride + (ti % 4) * (GQ_KC_GROUPS / 4) * 64;
            }
            switch (nblocks) {
            case 1: block_tile(1, blocks, bstride, wp, g0, g1, t, p, g0 == 0, xpf); break;
            case 2: block_tile(2, blocks, bstride, wp, g0, g1, t, p, g0 == 0, xpf); break;
            case 3: block_tile(3, blocks, bstride, wp, g0, g1, t, p, g0 == 0, xpf); break;
            default: block_tile(4, blocks, bstride, wp, g0, g1, t, p, g0 == 0, xpf); break;
            }
        }
        if (last) break;
    }
}

#endif
