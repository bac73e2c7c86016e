/*
 * example_main.c - run an exported glassquant model on int8 samples (C99, no malloc).
 *
 * Build (next to the files written by glassquant.export.c.export_c):
 *     cc -std=c99 -O2 -o model_main example_main.c gq_model.c gq_fully_connected_s8.c gq_requantize.c
 * Run:
 *     ./model_main [-t] [-l] [input.bin | -]
 *
 * Input: raw int8 bytes, GQ_INPUT_SIZE per sample, samples back to back, until end of file
 * (stdin when no file or "-" is given). A trailing partial sample is an error (exit code 3).
 * Output (stdout), per sample: every layer's int8 outputs in order (GQ_TOTAL_OUTPUTS bytes), or
 * with -l only the last layer's (GQ_OUTPUT_SIZE bytes). Binary by default; -t writes text, one
 * line per sample and layer: "<sample> <layer>: v0 v1 ...".
 */
#include <stdio.h>
#include <string.h>

#include "gq_model.h"
#include "gq_runtime.h"

static int8_t x_q[GQ_INPUT_SIZE];
static int8_t outputs[GQ_TOTAL_OUTPUTS];

static int write_text(long sample, int last_only)
{
    int32_t l;
    int32_t n;
    int32_t offset = 0;
    const gq_model *model = GQ_MODEL;

    for (l = 0; l < model->num_layers; l++) {
        const int32_t size = model->layers[l].out_features;
        if (!last_only || l == model->num_layers - 1) {
            if (printf("%ld %ld:", sample, (long)l) < 0) {
                return -1;
            }
            for (n = 0; n < size; n++) {
                if (printf(" %d", (int)outputs[offset + n]) < 0) {
                    return -1;
                }
            }
            if (putchar('\n') == EOF) {
                return -1;
            }
        }
        offset += size;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int text = 0;
    int last_only = 0;
    const char *path = NULL;
    FILE *in = stdin;
    long sample = 0;
    int i;
    int status;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0) {
            text = 1;
        } else if (strcmp(argv[i], "-l") == 0) {
            last_only = 1;
        } else if (strcmp(argv[i], "-h") == 0 || (argv[i][0] == '-' && argv[i][1] != '\0') || path != NULL) {
            fprintf(stderr, "usage: %s [-t] [-l] [input.bin | -]\n", argv[0]);
            return 1;
        } else {
            path = argv[i];
        }
    }
    status = gq_model_check(GQ_MODEL);
    if (status != GQ_OK) {
        fprintf(stderr, "model parameters out of range (code %d)\n", status);
        return 2;
    }
    if (path != NULL && strcmp(path, "-") != 0) {
        in = fopen(path, "rb");
        if (in == NULL) {
            fprintf(stderr, "cannot open %s\n", path);
            return 1;
        }
    }
    for (;;) {
        const size_t got = fread(x_q, 1, sizeof x_q, in);
        if (got == 0 && feof(in)) {
            break;
        }
        if (got != sizeof x_q) {
            fprintf(stderr, "sample %ld: read %lu of %lu bytes\n", sample, (unsigned long)got,
                    (unsigned long)sizeof x_q);
            return 3;
        }
        status = gq_model_run(GQ_MODEL, x_q, outputs);
        if (status != GQ_OK) {
            fprintf(stderr, "sample %ld: gq_model_run failed (code %d)\n", sample, status);
            return 2;
        }
        if (text) {
            if (write_text(sample, last_only) != 0) {
                return 4;
            }
        } else if (last_only) {
            if (fwrite(outputs + GQ_TOTAL_OUTPUTS - GQ_OUTPUT_SIZE, 1, GQ_OUTPUT_SIZE, stdout) != GQ_OUTPUT_SIZE) {
                return 4;
            }
        } else if (fwrite(outputs, 1, sizeof outputs, stdout) != sizeof outputs) {
            return 4;
        }
        sample++;
    }
    if (in != stdin) {
        fclose(in);
    }
    return fflush(stdout) == 0 ? 0 : 4;
}
