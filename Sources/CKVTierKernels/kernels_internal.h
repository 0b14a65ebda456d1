// Shared between the kernel files; not part of the module's public header.
#ifndef KVTIER_KERNELS_INTERNAL_H
#define KVTIER_KERNELS_INTERNAL_H
#include "include/kvtier_kernels.h"

#include <string.h>

float kvt_half_to_float(uint16_t h);

/// The f32 at p (any alignment): the scales of the repacked weight blocks.
static inline float kvt_load_f32(const void *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}
uint16_t kvt_float_to_half(float f);

float kvt_dot_qf_portable(int type, const void *w, const float *x, const float *xsum, int n);
float kvt_dot_f_portable(int type, const void *w, const float *x, int n);
void kvt_dequantize_row_portable(int type, const void *src, float *dst, int n);
void kvt_f16_to_f32_portable(const uint16_t *src, float *dst, size_t n);
void kvt_f32_to_f16_portable(const float *src, uint16_t *dst, size_t n);
void kvt_attend_runs_one(const float *q, const kvt_kv_run *runs, size_t offset, int elemBytes, size_t ld,
                         const int32_t *pos, int T, int headDim, float scale, const float *cosTable,
                         const float *sinTable, float *scores, float *out);

void kvt_quantize_q8_portable(int bits, const float *x, size_t ldx, int m, int n, kvt_q8_block *out);
void kvt_matvec_q8_portable(int bits, int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                            const kvt_q8_block *x, size_t ldx, int m, float *out, size_t ldo);

#if defined(__x86_64__)
#define KVT_X86 1
void kvt_quantize_q8_vnni(int bits, const float *x, size_t ldx, int m, int n, kvt_q8_block *out);
void kvt_matvec_q8_vnni(int bits, int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                        const kvt_q8_block *x, size_t ldx, int m, float *out, size_t ldo);
float kvt_dot_qf_avx2(int type, const void *w, const float *x, const float *xsum, int n);
float kvt_dot_qf_avx512(int type, const void *w, const float *x, const float *xsum, int n);
void kvt_matvec_qf_avx2(int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                        const float *x, const float *xsum, float *out);
void kvt_matvec_qf_avx512(int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                          const float *x, const float *xsum, float *out);
void kvt_matvec_rows_qf_avx512(int type, const void *w, size_t rowBytes, int r0, int r1, int n, const float *x,
                               size_t ldx, const float *xsum, size_t ldxsum, int m, float *out, size_t ldo);
float kvt_dot_f_avx2(int type, const void *w, const float *x, int n);
void kvt_dequantize_row_avx2(int type, const void *src, float *dst, int n);
void kvt_dequantize_row_avx512(int type, const void *src, float *dst, int n);
void kvt_f16_to_f32_avx2(const uint16_t *src, float *dst, size_t n);
void kvt_f32_to_f16_avx2(const float *src, uint16_t *dst, size_t n);
float kvt_dot_f32_avx2(const float *a, const float *b, int n);
void kvt_swiglu_avx512(const float *g, const float *u, float *y, size_t n);
void kvt_attend_group_avx512(const float *q, size_t ldq, int nq, const kvt_kv_run *runs, size_t offset, int elemBytes,
                             size_t ld, const int32_t *pos, int T, int headDim, float scale, const float *cosTable,
                             const float *sinTable, float *scores, float *out, size_t ldo);
void kvt_attend_rows_avx512(const float *q, size_t ldqRow, size_t ldq, int nq, int m, const kvt_kv_run *runs,
                            size_t offset, int elemBytes, size_t ld, const int32_t *pos, int T0, int headDim,
                            float scale, const float *cosTable, const float *sinTable, float *keys, float *values,
                            float *scores, float *out, size_t ldoRow, size_t ldo);
#endif
#endif
