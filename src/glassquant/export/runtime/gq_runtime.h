/*
 * gq_runtime.h - glassquant's portable integer-only runtime (C99, no malloc, integers only).
 *
 * It computes exactly what glassquant's "glassquant" dialect computes
 * (src/glassquant/dialects/integer.py), bit for bit. One fully connected layer:
 *
 *   acc[n] = bias_q[n] + sum_k (x_q[k] - x_zero_point) * w_q[n*K + k]        int32, exact
 *   y_q[n] = clamp(floor(acc[n] * multiplier[n] / 2^(31 + right_shift[n]) + 1/2) + y_zero_point,
 *                  qmin, qmax)                                               int8
 *
 * Integer ranges (checked by gq_model_check, documented in docs/c-runtime.md):
 *   x_q, w_q, y_q        int8, [-128, 127]; w_q is symmetric (its zero point is 0)
 *   x_zero_point,
 *   y_zero_point         [-128, 127]
 *   bias_q               int32; |bias_q| + sum_k |w_q| * max|x_q - x_zero_point| <= 2^31 - 1
 *                        (certified by the exporter), so no partial sum can overflow int32
 *   multiplier           int32, 0 or [2^30, 2^31 - 1] (Q31: a fraction in [0.5, 1))
 *   right_shift          [-30, 31]; total shift 31 + right_shift in [1, 62]; negative values
 *                        (a left shift) only for real multipliers >= 1
 *   qmin, qmax           -128 <= qmin <= qmax <= 127 (qmin = y_zero_point for a fused ReLU)
 *
 * int64 is used for one thing only: the product acc * multiplier (|product| < 2^62) and its
 * rounding shift. Rounding: once, half toward +infinity (TFLite / CMSIS-NN "single rounding").
 */
#ifndef GQ_RUNTIME_H
#define GQ_RUNTIME_H

#include <stdint.h>

#define GQ_QMIN (-128)
#define GQ_QMAX 127
#define GQ_MULTIPLIER_MIN 1073741824L /* 2^30 */
#define GQ_RIGHT_SHIFT_MIN (-30)
#define GQ_RIGHT_SHIFT_MAX 31

/* Return codes of gq_model_check / gq_model_run. */
#define GQ_OK 0
#define GQ_ERROR_SHAPE (-1)     /* a dimension < 1, or a layer's input size != the previous output size */
#define GQ_ERROR_PARAMETER (-2) /* a zero point, clamp, multiplier or right shift outside its range */

/* One fully connected (Linear) layer: K inputs, N outputs, parameters in the ranges above. */
typedef struct gq_fc_layer {
    int32_t in_features;         /* K >= 1 */
    int32_t out_features;        /* N >= 1 */
    const int8_t *w_q;           /* (N, K) row-major */
    const int32_t *bias_q;       /* (N) */
    const int32_t *multiplier;   /* (N) */
    const int32_t *right_shift;  /* (N) */
    int32_t x_zero_point;
    int32_t y_zero_point;
    int32_t qmin;
    int32_t qmax;
} gq_fc_layer;

/* A chain of layers: layer l reads the int8 output of layer l - 1. */
typedef struct gq_model {
    int32_t num_layers;          /* >= 1 */
    const gq_fc_layer *layers;   /* (num_layers) */
    int32_t input_size;          /* layers[0].in_features */
    int32_t total_outputs;       /* sum of out_features: the size of gq_model_run's output buffer */
} gq_model;

/* Requantize one int32 accumulator to the int8 grid (gq_requantize.c). */
int32_t gq_requantize(int32_t acc, int32_t multiplier, int32_t right_shift, int32_t y_zero_point,
                      int32_t qmin, int32_t qmax);

/* One input row (K int8) through one layer to N int8 outputs (gq_fully_connected_s8.c). */
void gq_fully_connected_s8(const gq_fc_layer *layer, const int8_t *x_q, int8_t *y_q);

/* GQ_OK if every shape and parameter of the model is in range, else a GQ_ERROR_* code (gq_model.c). */
int gq_model_check(const gq_model *model);

/* One input row (input_size int8) through every layer. outputs: total_outputs int8, layer 0's
 * N_0 outputs first, then layer 1's, ... (the last layer's outputs end the buffer). Returns
 * GQ_OK, or the gq_model_check error (outputs untouched). */
int gq_model_run(const gq_model *model, const int8_t *x_q, int8_t *outputs);

#endif /* GQ_RUNTIME_H */
