/* Drives kernels/_wo.c over every packed width (2..8 bits, and signed int8 with the scale after the sum),
 * per tensor / row / group of 32, K with and without tails, and code buffers of exactly the packed size,
 * so that a sanitizer build reports any read past the stream (tests/unit/test_kernels_weight_only.py). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
int gq_wo_linear(const float *x, int64_t m, int64_t k, int64_t ldx, int64_t n, const uint8_t *codes, int64_t nbytes,
                 int bits, int mode, const float *scale, const uint8_t *zp, int64_t group, int64_t row_groups,
                 const float *bias, float *y);
void gq_wo_dequantize(const uint8_t *codes, int64_t nbytes, int bits, int64_t n, int64_t k, const float *scale,
                      const uint8_t *zp, int64_t group, int64_t row_groups, float *out);
int main(void) {
    srand(1);
    int64_t ks[] = {8, 64, 96, 128, 256, 37, 293};
    int64_t ns[] = {1, 3, 7};
    for (int bits = 2; bits <= 8; bits++)
        for (unsigned ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
            for (unsigned ni = 0; ni < 3; ni++)
                for (int gran = 0; gran < 3; gran++) {
                    int64_t k = ks[ki], n = ns[ni];
                    if (bits == 4 && k % 2) continue;
                    int64_t group = gran == 2 ? 32 : k, row_groups = gran == 0 ? 0 : (gran == 1 ? 1 : k / 32);
                    if (gran == 2 && k % 32) continue;
                    int64_t groups = gran == 0 ? 1 : n * row_groups;
                    int64_t nbytes = (n * k * bits + 7) / 8;
                    uint8_t *codes = malloc(nbytes); /* exact size: ASan catches any over-read */
                    for (int64_t i = 0; i < nbytes; i++) codes[i] = rand() & 255;
                    float *scale = malloc(groups * sizeof(float));
                    uint8_t *zp = malloc(groups);
                    for (int64_t g = 0; g < groups; g++) { scale[g] = 0.01f * (1 + g % 7); zp[g] = rand() % (1 << bits); }
                    for (int64_t m = 1; m <= 6; m += 5) {
                        float *x = malloc(m * k * sizeof(float)), *y = malloc(m * n * sizeof(float));
                        for (int64_t i = 0; i < m * k; i++) x[i] = (float)(rand() % 100) / 50.0f - 1.0f;
                        if (gq_wo_linear(x, m, k, k, n, codes, nbytes, bits, 0, scale, zp, group, row_groups, NULL, y)) return 1;
                        free(x); free(y);
                    }
                    if (bits == 8 && gran == 1) { /* mode 1: signed int8 codes, one scale per row */
                        float *x = malloc(3 * k * sizeof(float)), *y = malloc(3 * n * sizeof(float));
                        for (int64_t i = 0; i < 3 * k; i++) x[i] = (float)(rand() % 100) / 50.0f - 1.0f;
                        if (gq_wo_linear(x, 3, k, k, n, codes, nbytes, 8, 1, scale, NULL, k, 1, scale, y)) return 1;
                        free(x); free(y);
                    }
                    float *w = malloc(n * k * sizeof(float));
                    gq_wo_dequantize(codes, nbytes, bits, n, k, scale, zp, group, row_groups, w);
                    free(w); free(codes); free(scale); free(zp);
                }
    puts("ok");
    return 0;
}
