/* Drives gq_im2col_u8 (kernels/_vnni.c) over strides, paddings, dilations, kernel and image sizes,
 * channel counts below and above the small-copy limit, with input and output buffers of exactly their
 * size, so that a sanitizer build reports any access outside them (tests/unit/test_kernels_vnni.py).
 * Each output byte is also checked against a direct evaluation of the definition. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
void gq_im2col_u8(const uint8_t *x, int64_t n, int64_t h, int64_t w, int64_t c, int64_t kh, int64_t kw,
                  int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int32_t zero_point,
                  int64_t oh, int64_t ow, uint8_t *out);
int main(void) {
    srand(2);
    const int64_t cs[] = {1, 3, 16, 40};
    for (int t = 0; t < 400; t++) {
        int64_t n = 1 + rand() % 2, c = cs[rand() % 4], h = 1 + rand() % 9, w = 1 + rand() % 9;
        int64_t kh = 1 + rand() % 4, kw = 1 + rand() % 4, sh = 1 + rand() % 3, sw = 1 + rand() % 3;
        int64_t ph = rand() % 3, pw = rand() % 3, dh = 1 + rand() % 2, dw = 1 + rand() % 2;
        int64_t oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1, ow = (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
        if (h + 2 * ph < dh * (kh - 1) + 1 || w + 2 * pw < dw * (kw - 1) + 1) continue;
        int32_t zp = rand() % 256;
        uint8_t *x = malloc(n * h * w * c), *out = malloc(n * oh * ow * kh * kw * c);
        for (int64_t i = 0; i < n * h * w * c; i++) x[i] = rand() & 255;
        gq_im2col_u8(x, n, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, zp, oh, ow, out);
        const uint8_t *o = out;
        for (int64_t b = 0; b < n; b++)
            for (int64_t y = 0; y < oh; y++)
                for (int64_t xo = 0; xo < ow; xo++)
                    for (int64_t i = 0; i < kh; i++)
                        for (int64_t j = 0; j < kw; j++)
                            for (int64_t ci = 0; ci < c; ci++, o++) {
                                int64_t ih = y * sh - ph + i * dh, iw = xo * sw - pw + j * dw;
                                int v = (ih < 0 || ih >= h || iw < 0 || iw >= w) ? zp : x[((b * h + ih) * w + iw) * c + ci];
                                if (*o != v) { printf("mismatch at case %d\n", t); return 1; }
                            }
        free(x);
        free(out);
    }
    puts("ok");
    return 0;
}
