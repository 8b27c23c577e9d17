/*
 * tensor_dump.c - development helper for tests/tools/check_gguf_quants.py: converts raw
 * rows between float32 and a GGML type with lib/tensor's reference code.
 *
 *   tensor_dump deq TYPE N_COLS < blocks > floats     (dequantize rows of N_COLS)
 *   tensor_dump q   TYPE N_COLS < floats > blocks     (reference quantize)
 *
 * Build (from the repository root):
 *   cc -std=c11 -O2 -Iinclude -Ilib tests/tools/tensor_dump.c lib/tensor/formats.c \
 *      lib/base/status.c -lm -o build/tensor_dump
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensor/formats.h"

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s deq|q TYPE N_COLS\n", argv[0]);
        return 2;
    }
    const int quant = strcmp(argv[1], "q") == 0;
    const int32_t type = (int32_t)atoi(argv[2]);
    const int64_t n = atoll(argv[3]);
    size_t rb;
    if (tkv_type_row_bytes(type, n, &rb) != TKV_OK) {
        fprintf(stderr, "%s\n", tkv_last_error());
        return 2;
    }
    const size_t fb = (size_t)n * sizeof(float);
    void *blk = malloc(rb);
    float *f = malloc(fb);
    for (;;) {
        if (quant) {
            if (fread(f, 1, fb, stdin) != fb) {
                break;
            }
            tkv_quantize_row(type, f, blk, n);
            fwrite(blk, 1, rb, stdout);
        } else {
            if (fread(blk, 1, rb, stdin) != rb) {
                break;
            }
            tkv_dequantize_row(type, blk, f, n);
            fwrite(f, 1, fb, stdout);
        }
    }
    free(blk);
    free(f);
    return 0;
}
