/*
 * gq_fully_connected_s8.c - one int8 row through one fully connected layer (integers only).
 *
 * Bit-exact with glassquant.dialects.integer.linear (ranges in gq_runtime.h). The recipe:
 * accumulate (int32, zero point subtracted from each input, bias first) -> requantize
 * (Q31 multiplier, one rounding) -> add the output zero point -> clamp to [qmin, qmax].
 */
#include <stddef.h>

#include "gq_runtime.h"

/*
 * y_q[n] = requantize(bias_q[n] + sum_k (x_q[k] - x_zero_point) * w_q[n][k]) for n in [0, N).
 *
 * x_q: K int8; y_q: N int8 (must not overlap x_q). Each term (x_q - zx) * w_q is at most
 * 255 * 128 in magnitude; the exporter certifies |bias_q| + sum_k |terms| <= 2^31 - 1, so every
 * partial sum fits int32 (no overflow, whatever the input).
 */
void gq_fully_connected_s8(const gq_fc_layer *layer, const int8_t *x_q, int8_t *y_q)
{
    const size_t k_dim = (size_t)layer->in_features;
    const size_t n_dim = (size_t)layer->out_features;
    const int32_t zx = layer->x_zero_point;
    size_t n;
    size_t k;

    for (n = 0; n < n_dim; n++) {
        const int8_t *w_row = layer->w_q + n * k_dim;
        int32_t acc = layer->bias_q[n];
        for (k = 0; k < k_dim; k++) {
            acc += ((int32_t)x_q[k] - zx) * (int32_t)w_row[k];
        }
        y_q[n] = (int8_t)gq_requantize(acc, layer->multiplier[n], layer->right_shift[n], layer->y_zero_point,
                                       layer->qmin, layer->qmax);
    }
}
