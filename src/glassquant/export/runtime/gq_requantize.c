/*
 * gq_requantize.c - int32 accumulator to int8 output: Q31 multiplier, one rounding, zero point, clamp.
 *
 * Bit-exact with glassquant.dialects.integer.requantize (ranges in gq_runtime.h).
 */
#include "gq_runtime.h"

/* floor(v / 2^shift) for shift in [1, 62], without relying on ">>" of a negative value
 * (implementation-defined in C99): for v < 0, floor(v / d) = -floor((-v - 1) / d) - 1.
 * |v| < 2^63 - 2^61 here, so -v cannot overflow. */
static int64_t gq_floor_shift_s64(int64_t v, int32_t shift)
{
    if (v >= 0) {
        return v >> shift;
    }
    return -((-v - 1) >> shift) - 1;
}

/*
 * y = clamp(floor(acc * multiplier / 2^(31 + right_shift) + 1/2) + y_zero_point, qmin, qmax)
 *
 * acc: int32; multiplier: 0 or [2^30, 2^31 - 1]; right_shift: [-30, 31], so the total shift
 * 31 + right_shift is in [1, 62]. product = acc * multiplier is exact in int64 (|product| < 2^62);
 * adding 2^(total_shift - 1) (< 2^62) cannot overflow. The rounding is half toward +infinity
 * (-2.5 -> -2, 2.5 -> 3). The clamp is applied to the scaled value against [qmin - zy, qmax - zy]
 * (the same as clamping after adding zy), in int64, so no conversion can overflow.
 * Example: acc = 12, multiplier = 2^30, right_shift = 2: 12 * 2^30 / 2^33 = 1.5 -> 2.
 */
int32_t gq_requantize(int32_t acc, int32_t multiplier, int32_t right_shift, int32_t y_zero_point,
                      int32_t qmin, int32_t qmax)
{
    const int32_t total_shift = 31 + right_shift;
    const int64_t product = (int64_t)acc * (int64_t)multiplier;
    const int64_t half = (int64_t)1 << (total_shift - 1);
    const int64_t scaled = gq_floor_shift_s64(product + half, total_shift);
    const int64_t lo = (int64_t)qmin - y_zero_point;
    const int64_t hi = (int64_t)qmax - y_zero_point;
    int32_t y;

    if (scaled < lo) {
        y = (int32_t)lo;
    } else if (scaled > hi) {
        y = (int32_t)hi;
    } else {
        y = (int32_t)scaled;
    }
    return y + y_zero_point;
}
