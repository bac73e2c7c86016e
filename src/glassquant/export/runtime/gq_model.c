/*
 * gq_model.c - check a model's parameters, and run one input row through its chain of layers.
 *
 * No malloc: the caller owns the input row and the output buffer (total_outputs int8, sized by
 * the exported header's <NAME>_TOTAL_OUTPUTS macro).
 */
#include <stddef.h>

#include "gq_runtime.h"

static int gq_in_range(int32_t v, int32_t lo, int32_t hi)
{
    return v >= lo && v <= hi;
}

/* Every shape and parameter within the ranges documented in gq_runtime.h. */
int gq_model_check(const gq_model *model)
{
    int32_t l;
    int32_t n;
    int32_t total = 0;

    if (model->num_layers < 1 || model->input_size != model->layers[0].in_features) {
        return GQ_ERROR_SHAPE;
    }
    for (l = 0; l < model->num_layers; l++) {
        const gq_fc_layer *layer = &model->layers[l];
        if (layer->in_features < 1 || layer->out_features < 1) {
            return GQ_ERROR_SHAPE;
        }
        if (l > 0 && layer->in_features != model->layers[l - 1].out_features) {
            return GQ_ERROR_SHAPE;
        }
        if (!gq_in_range(layer->x_zero_point, GQ_QMIN, GQ_QMAX) || !gq_in_range(layer->y_zero_point, GQ_QMIN, GQ_QMAX)
            || !gq_in_range(layer->qmin, GQ_QMIN, GQ_QMAX) || !gq_in_range(layer->qmax, layer->qmin, GQ_QMAX)) {
            return GQ_ERROR_PARAMETER;
        }
        for (n = 0; n < layer->out_features; n++) {
            if (layer->multiplier[n] != 0 && layer->multiplier[n] < GQ_MULTIPLIER_MIN) {
                return GQ_ERROR_PARAMETER;
            }
            if (layer->multiplier[n] < 0 || !gq_in_range(layer->right_shift[n], GQ_RIGHT_SHIFT_MIN, GQ_RIGHT_SHIFT_MAX)) {
                return GQ_ERROR_PARAMETER;
            }
        }
        if (layer->out_features > INT32_MAX - total) {
            return GQ_ERROR_SHAPE;
        }
        total += layer->out_features;
    }
    return total == model->total_outputs ? GQ_OK : GQ_ERROR_SHAPE;
}

/* Layer l reads layer l - 1's outputs in place in the output buffer (layer 0 reads x_q). */
int gq_model_run(const gq_model *model, const int8_t *x_q, int8_t *outputs)
{
    const int status = gq_model_check(model);
    const int8_t *in = x_q;
    int8_t *out = outputs;
    int32_t l;

    if (status != GQ_OK) {
        return status;
    }
    for (l = 0; l < model->num_layers; l++) {
        gq_fully_connected_s8(&model->layers[l], in, out);
        in = out;
        out += model->layers[l].out_features;
    }
    return GQ_OK;
}
