// x86-64 SIMD paths. Each function carries its own target attribute, so the file
// compiles for any x86-64 and the dispatcher calls a path only when the CPU has it.
#include "kernels_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))
#define INLINE static inline __attribute__((always_inline))

static inline uint16_t load_u16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

AVX2 static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

// ---------------------------------------------------------------------------------------
// Quantized weights times F32 activations. Per block of 32 weights the kernels form the
// vector t of partial sums of q_j * x_j (q_j the block's integers, exact as floats) and add
// d * t to an accumulator; Q4_1 adds m * xsum[b] on the side. A Q4 block's byte j holds
// weight j in its low nibble and weight j + 16 in its high nibble. Row loops take four blocks
// per step into four accumulators so that the FMA latency chains overlap.

// The half at p as a float in lane 0; the two halves at p (Q4_1's d and m) in lanes 0 and 1.
AVX2 static inline __m128 load_h1(const uint8_t *p) { return _mm_cvtph_ps(_mm_cvtsi32_si128(load_u16(p))); }
AVX2 static inline __m128 load_h2(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(v));
}

// 8 signed bytes -> 8 floats.
AVX2 static inline __m256 i8x8_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }

// t for a block whose 32 integers are the signed bytes lo[0..15] then hi[0..15].
AVX2 static inline __m256 block_sum_avx2(__m128i lo, __m128i hi, const float *x) {
    __m256 t0 = _mm256_mul_ps(i8x8_ps(lo), _mm256_loadu_ps(x));
    __m256 t1 = _mm256_mul_ps(i8x8_ps(hi), _mm256_loadu_ps(x + 16));
    t0 = _mm256_fmadd_ps(i8x8_ps(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(x + 8), t0);
    t1 = _mm256_fmadd_ps(i8x8_ps(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(x + 24), t1);
    return _mm256_add_ps(t0, t1);
}

// One block at p: acc += d * t (and accm += m * xs[0] for Q4_1). `type` is a constant after inlining.
AVX2 INLINE void block_avx2(int type, const uint8_t *p, const float *x, const float *xs, __m256 *acc, __m128 *accm) {
    const __m128i m4 = _mm_set1_epi8(0x0f);
    if (type == KVT_TYPE_Q8_0) {
        __m256 t = block_sum_avx2(_mm_loadu_si128((const __m128i *)(p + 2)), _mm_loadu_si128((const __m128i *)(p + 18)),
                                  x);
        *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(load_h1(p)), t, *acc);
    } else if (type == KVT_TYPE_Q4_0) {
        __m128i raw = _mm_loadu_si128((const __m128i *)(p + 2)), eight = _mm_set1_epi8(8);
        __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, m4), eight);
        __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), eight);
        *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(load_h1(p)), block_sum_avx2(lo, hi, x), *acc);
    } else {  // Q4_1
        __m128i raw = _mm_loadu_si128((const __m128i *)(p + 4));
        __m128i lo = _mm_and_si128(raw, m4), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
        __m128 dm = load_h2(p);
        *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), block_sum_avx2(lo, hi, x), *acc);
        *accm = _mm_fmadd_ss(_mm_movehdup_ps(dm), _mm_load_ss(xs), *accm);
    }
}

AVX2 INLINE float row_avx2(int type, const uint8_t *p, const float *x, const float *xs, int nb) {
    const int bs = type == KVT_TYPE_Q4_1 ? 20 : type == KVT_TYPE_Q4_0 ? 18 : 34;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m128 m0 = _mm_setzero_ps(), m1 = m0, m2 = m0, m3 = m0;
    int b = 0;
    for (; b + 4 <= nb; b += 4, p += 4 * bs, x += 128) {
        block_avx2(type, p, x, xs + b, &a0, &m0);
        block_avx2(type, p + bs, x + 32, xs + b + 1, &a1, &m1);
        block_avx2(type, p + 2 * bs, x + 64, xs + b + 2, &a2, &m2);
        block_avx2(type, p + 3 * bs, x + 96, xs + b + 3, &a3, &m3);
    }
    for (; b < nb; b++, p += bs, x += 32) block_avx2(type, p, x, xs + b, &a0, &m0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    if (type == KVT_TYPE_Q4_1) s += _mm_cvtss_f32(_mm_add_ss(_mm_add_ss(m0, m1), _mm_add_ss(m2, m3)));
    return s;
}

AVX2 void kvt_matvec_qf_avx2(int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                             const float *x, const float *xsum, float *out) {
    const uint8_t *base = (const uint8_t *)w;
    int nb = n / 32;
    switch (type) {
    case KVT_TYPE_Q4_1:
        for (int r = r0; r < r1; r++) out[r - r0] = row_avx2(KVT_TYPE_Q4_1, base + (size_t)r * rowBytes, x, xsum, nb);
        return;
    case KVT_TYPE_Q4_0:
        for (int r = r0; r < r1; r++) out[r - r0] = row_avx2(KVT_TYPE_Q4_0, base + (size_t)r * rowBytes, x, xsum, nb);
        return;
    case KVT_TYPE_Q8_0:
        for (int r = r0; r < r1; r++) out[r - r0] = row_avx2(KVT_TYPE_Q8_0, base + (size_t)r * rowBytes, x, xsum, nb);
        return;
    default:
        for (int r = r0; r < r1; r++) out[r - r0] = 0.0f;
        return;
    }
}

AVX2 float kvt_dot_qf_avx2(int type, const void *w, const float *x, const float *xsum, int n) {
    float out;
    kvt_matvec_qf_avx2(type, w, 0, 0, 1, n, x, xsum, &out);
    return out;
}

// AVX-512: a block is dequantized into two 16-lane halves (weights 0..15 and 16..31), each
// weight its value as kvt_dequantize_row gives it (d * q + m for Q4_1, d * (q - 8) for Q4_0,
// d * q for Q8_0), and both halves are multiplied into one accumulator: two fused
// multiply-adds per block and activation vector, the dequantization shared by every vector
// that uses the block (the previous kernels formed d * sum(q_j x_j) per block and vector: three
// operations per block and vector, measured 1.4-1.7x slower at 16 vectors). A Q4 block is
// dequantized by a lookup: the 16 possible values (d * i + m, or d * (i - 8)) are computed
// once per block, and vpermps, which reads only the low 4 bits of each index, picks each
// nibble's value without masking or converting. Q4_1 and Q8_0 never read the per-block activation sums.
AVX512 INLINE void dequant_block_avx512(int type, const uint8_t *p, __m512 *lo, __m512 *hi) {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // Repacked blocks: the f32 scales are broadcast from memory (a load, no shuffle), which
    // leaves the shuffle port to the nibble lookups. Measured on one row against the raw
    // layout: 1.4-1.9x faster (the f16 scales cost a convert and two broadcasts per block).
    if (type == KVT_TYPE_Q4_1_R) {
        __m512 table = _mm512_fmadd_ps(_mm512_set1_ps(kvt_load_f32(p)), iota, _mm512_set1_ps(kvt_load_f32(p + 4)));
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 8)));
        *lo = _mm512_permutexvar_ps(q, table);
        *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
    } else if (type == KVT_TYPE_Q4_0_R) {
        __m512 table = _mm512_mul_ps(_mm512_set1_ps(kvt_load_f32(p)), _mm512_sub_ps(iota, _mm512_set1_ps(8.0f)));
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 4)));
        *lo = _mm512_permutexvar_ps(q, table);
        *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
    } else if (type == KVT_TYPE_Q8_0_R) {
        __m512 d = _mm512_set1_ps(kvt_load_f32(p));
        *lo = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 4)))));
        *hi = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 20)))));
    } else if (type == KVT_TYPE_Q8_0) {
        __m512 d = _mm512_broadcastss_ps(load_h1(p));
        *lo = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 2)))));
        *hi = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 18)))));
    } else if (type == KVT_TYPE_Q4_0) {
        __m512 table = _mm512_mul_ps(_mm512_broadcastss_ps(load_h1(p)), _mm512_sub_ps(iota, _mm512_set1_ps(8.0f)));
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 2)));
        *lo = _mm512_permutexvar_ps(q, table);
        *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
    } else {  // Q4_1
        __m128 dm = load_h2(p);
        __m512 table = _mm512_fmadd_ps(_mm512_broadcastss_ps(dm), iota, _mm512_broadcastss_ps(_mm_movehdup_ps(dm)));
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 4)));
        *lo = _mm512_permutexvar_ps(q, table);
        *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
    }
}

// A row of blocks dequantized to F32 (the sgemm path's weights), 32 weights per block through
// the same lookups as the kernels above: every value equals kvt_dequantize_row_portable's
// (one rounding of d * q + m, or d * q), two 64-byte stores per block.
AVX512 void kvt_dequantize_row_avx512(int type, const void *src, float *dst, int n) {
    size_t bs = kvt_block_bytes(type);
    const uint8_t *p = (const uint8_t *)src;
    for (int b = 0; b < n / 32; b++, p += bs) {
        __m512 lo, hi;
        dequant_block_avx512(type, p, &lo, &hi);
        _mm512_storeu_ps(dst + 32 * b, lo);
        _mm512_storeu_ps(dst + 32 * b + 16, hi);
    }
}

// The sum of a row's 16 lanes, in the order the four-row reduction below uses.
AVX512 static inline float reduce1_avx512(__m512 a) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_permute_ps(s4, 0xb1));
    return _mm_cvtss_f32(_mm_add_ps(s2, _mm_permute_ps(s2, 0x4e)));
}

// The four rows' sums (lanes 0..3), each added exactly as reduce1_avx512 adds it.
AVX512 static inline __m128 reduce4_avx512(__m512 a, __m512 b, __m512 c, __m512 d) {
    // [a.lo8 | b.lo8] + [a.hi8 | b.hi8], likewise c, d
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xee));
    // 128-bit lane k holds row k's four partial sums
    __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xdd));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xb1));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4e));
    const __m512i pick = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(pick, v));
}

// WR weight rows (p, rowBytes apart) against R activation vectors (x, ldx apart), WR and R
// constants after inlining. Every (row, vector) pair takes exactly the same operations in the
// same order whatever WR and R are: block by block, acc = fma(hi, x[16..31], fma(lo, x[0..15],
// acc)) into one accumulator, then reduced as reduce1_avx512 does. So a result does not depend
// on which other rows or vectors were computed with it (a lone decode, a batched step and a
// prompt chunk give the same bits); WR and R only decide how many independent FMA chains are
// in flight and how many vectors use each dequantized block. out[i * ldo + k] is row k against
// vector i.
AVX512 INLINE void tile_avx512(int type, int WR, int R, const uint8_t *p, size_t rowBytes, const float *x, size_t ldx,
                               int nb, float *out, size_t ldo) {
    const int bs = type == KVT_TYPE_Q4_1   ? 20
                 : type == KVT_TYPE_Q4_0   ? 18
                 : type == KVT_TYPE_Q8_0   ? 34
                 : type == KVT_TYPE_Q4_1_R ? 24
                 : type == KVT_TYPE_Q4_0_R ? 20
                                           : 36;
    __m512 acc[8][16];
    for (int k = 0; k < WR; k++)
        for (int i = 0; i < R; i++) acc[k][i] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m512 lo[8], hi[8];
        for (int k = 0; k < WR; k++)
            dequant_block_avx512(type, p + (size_t)k * rowBytes + (size_t)b * bs, &lo[k], &hi[k]);
        for (int i = 0; i < R; i++) {
            const float *xi = x + i * ldx + b * 32;
            __m512 x0 = _mm512_loadu_ps(xi), x1 = _mm512_loadu_ps(xi + 16);
            for (int k = 0; k < WR; k++) acc[k][i] = _mm512_fmadd_ps(hi[k], x1, _mm512_fmadd_ps(lo[k], x0, acc[k][i]));
        }
    }
    for (int i = 0; i < R; i++) {
        int k = 0;
        for (; k + 4 <= WR; k += 4) {
            float s[4];
            _mm_storeu_ps(s, reduce4_avx512(acc[k][i], acc[k + 1][i], acc[k + 2][i], acc[k + 3][i]));
            for (int j = 0; j < 4; j++) out[i * ldo + k + j] = s[j];
        }
        for (; k < WR; k++) out[i * ldo + k] = reduce1_avx512(acc[k][i]);
    }
}

// One activation vector: eight rows at a time (eight FMA chains), then the rest one by one.
AVX512 INLINE void rows_avx512(int type, const uint8_t *p, size_t rowBytes, int rows, const float *x, int nb,
                               float *out) {
    int r = 0;
    for (; r + 8 <= rows; r += 8) tile_avx512(type, 8, 1, p + (size_t)r * rowBytes, rowBytes, x, 0, nb, out + r, 0);
    for (; r < rows; r++) tile_avx512(type, 1, 1, p + (size_t)r * rowBytes, rowBytes, x, 0, nb, out + r, 0);
}

// Several activation vectors (a batched decode step or a prompt chunk): rows in tiles of 16
// (in L1 while every vector uses them), two rows' blocks dequantized at a time and used by
// eight vectors (sixteen FMA chains, with the two rows' dequantized halves and one vector's
// activations in registers: 22 of the 32). The last 1..7 vectors take four or two at a time
// against two or four rows, and a last one goes through the one-vector path. Measured against
// other shapes (rows x vectors 2x4, 3x6, 4x4, 2x10, 2x12, 1x16) on the FFN, attention and
// vocabulary matrices of SmolLM2, 2x8 was fastest at 16 and 32 vectors.
AVX512 INLINE void rows_multi_avx512(int type, const uint8_t *p, size_t rowBytes, int rows, const float *x, size_t ldx,
                                     int m, int nb, float *out, size_t ldo) {
    for (int t0 = 0; t0 < rows; t0 += 16) {
        int t1 = t0 + 16 < rows ? t0 + 16 : rows;
        const uint8_t *tile = p + (size_t)t0 * rowBytes;
        int n = t1 - t0, i = 0;
        for (; i + 8 <= m; i += 8) {
            int r = 0;
            for (; r + 2 <= n; r += 2)
                tile_avx512(type, 2, 8, tile + (size_t)r * rowBytes, rowBytes, x + i * ldx, ldx, nb,
                            out + i * ldo + t0 + r, ldo);
            for (; r < n; r++)
                tile_avx512(type, 1, 8, tile + (size_t)r * rowBytes, rowBytes, x + i * ldx, ldx, nb,
                            out + i * ldo + t0 + r, ldo);
        }
        while (i + 4 <= m) {
            int r = 0;
            for (; r + 2 <= n; r += 2)
                tile_avx512(type, 2, 4, tile + (size_t)r * rowBytes, rowBytes, x + i * ldx, ldx, nb,
                            out + i * ldo + t0 + r, ldo);
            for (; r < n; r++)
                tile_avx512(type, 1, 4, tile + (size_t)r * rowBytes, rowBytes, x + i * ldx, ldx, nb,
                            out + i * ldo + t0 + r, ldo);
            i += 4;
        }
        while (i + 2 <= m) {
            int r = 0;
            for (; r + 4 <= n; r += 4)
                tile_avx512(type, 4, 2, tile + (size_t)r * rowBytes, rowBytes, x + i * ldx, ldx, nb,
                            out + i * ldo + t0 + r, ldo);
            for (; r < n; r++)
                tile_avx512(type, 1, 2, tile + (size_t)r * rowBytes, rowBytes, x + i * ldx, ldx, nb,
                            out + i * ldo + t0 + r, ldo);
            i += 2;
        }
        for (; i < m; i++) rows_avx512(type, tile, rowBytes, n, x + i * ldx, nb, out + i * ldo + t0);
    }
}

AVX512 void kvt_matvec_rows_qf_avx512(int type, const void *w, size_t rowBytes, int r0, int r1, int n, const float *x,
                                      size_t ldx, const float *xsum, size_t ldxsum, int m, float *out, size_t ldo) {
    (void)xsum, (void)ldxsum;  // the AVX-512 kernels dequantize Q4_1's offsets into the weights
    const uint8_t *base = (const uint8_t *)w + (size_t)r0 * rowBytes;
    int nb = n / 32, rows = r1 - r0;
    switch (type) {
    case KVT_TYPE_Q4_1: rows_multi_avx512(KVT_TYPE_Q4_1, base, rowBytes, rows, x, ldx, m, nb, out, ldo); return;
    case KVT_TYPE_Q4_0: rows_multi_avx512(KVT_TYPE_Q4_0, base, rowBytes, rows, x, ldx, m, nb, out, ldo); return;
    case KVT_TYPE_Q8_0: rows_multi_avx512(KVT_TYPE_Q8_0, base, rowBytes, rows, x, ldx, m, nb, out, ldo); return;
    case KVT_TYPE_Q4_1_R: rows_multi_avx512(KVT_TYPE_Q4_1_R, base, rowBytes, rows, x, ldx, m, nb, out, ldo); return;
    case KVT_TYPE_Q4_0_R: rows_multi_avx512(KVT_TYPE_Q4_0_R, base, rowBytes, rows, x, ldx, m, nb, out, ldo); return;
    case KVT_TYPE_Q8_0_R: rows_multi_avx512(KVT_TYPE_Q8_0_R, base, rowBytes, rows, x, ldx, m, nb, out, ldo); return;
    default:
        for (int i = 0; i < m; i++)
            for (int r = 0; r < rows; r++) out[i * ldo + r] = 0.0f;
        return;
    }
}

AVX512 void kvt_matvec_qf_avx512(int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                                 const float *x, const float *xsum, float *out) {
    (void)xsum;  // the AVX-512 kernels dequantize Q4_1's offsets into the weights
    const uint8_t *base = (const uint8_t *)w + (size_t)r0 * rowBytes;
    int nb = n / 32, rows = r1 - r0;
    switch (type) {
    case KVT_TYPE_Q4_1: rows_avx512(KVT_TYPE_Q4_1, base, rowBytes, rows, x, nb, out); return;
    case KVT_TYPE_Q4_0: rows_avx512(KVT_TYPE_Q4_0, base, rowBytes, rows, x, nb, out); return;
    case KVT_TYPE_Q8_0: rows_avx512(KVT_TYPE_Q8_0, base, rowBytes, rows, x, nb, out); return;
    case KVT_TYPE_Q4_1_R: rows_avx512(KVT_TYPE_Q4_1_R, base, rowBytes, rows, x, nb, out); return;
    case KVT_TYPE_Q4_0_R: rows_avx512(KVT_TYPE_Q4_0_R, base, rowBytes, rows, x, nb, out); return;
    case KVT_TYPE_Q8_0_R: rows_avx512(KVT_TYPE_Q8_0_R, base, rowBytes, rows, x, nb, out); return;
    default:
        for (int r = 0; r < rows; r++) out[r] = 0.0f;
        return;
    }
}

AVX512 float kvt_dot_qf_avx512(int type, const void *w, const float *x, const float *xsum, int n) {
    float out;
    kvt_matvec_qf_avx512(type, w, 0, 0, 1, n, x, xsum, &out);
    return out;
}

// ---------------------------------------------------------------------------------------
// Decode attention for the query heads of one KV head. Per cached key, 16 lanes at a time: the
// F16 (or F32) key is rotated by its position once, k' = c2 * k + s2 * swap(k), with c2 and s2
// the position's cos and sin each repeated for a pair's two lanes (s2 negated in even lanes)
// and swap exchanging each pair's lanes; then every query's dot product with k' accumulates in
// its own 16-lane vector and is reduced. The softmax takes 16 scores at a time (a polynomial
// e^x); the values are converted once per row and accumulated into every head's output.
// e^x for x <= 0 on 16 lanes (scores minus their maximum): x = k ln2 + r with |r| <= ln2/2,
// e^r by Cephes' degree-7 polynomial (relative error about 1e-7, as expf's few ulp), times 2^k
// by vscalefps, which also takes the underflow of very negative x to 0 as expf does.
AVX512 static inline __m512 exp_nonpositive_avx512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-103.0f));  // e^-103 is below the smallest subnormal
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, k);
}

// y = g * sigmoid(g) * u on 16 lanes at a time, SwiGLU's gate: e = e^-|g| by the polynomial
// above (never overflows), sigmoid(g) = 1 / (1 + e) for g >= 0 and e / (1 + e) below.
AVX512 void kvt_swiglu_avx512(const float *g, const float *u, float *y, size_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    size_t i = 0;
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 gv = _mm512_maskz_loadu_ps(m, g + i), uv = _mm512_maskz_loadu_ps(m, u + i);
        __m512 e = exp_nonpositive_avx512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(gv)));
        __mmask16 negative = _mm512_cmp_ps_mask(gv, _mm512_setzero_ps(), _CMP_LT_OQ);
        __m512 sig = _mm512_div_ps(_mm512_mask_blend_ps(negative, one, e), _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_mul_ps(gv, sig), uv));
    }
}

AVX512 static void load_row16(const uint8_t *p, int elemBytes, int c, __m512 *v) {
    *v = elemBytes == 2 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 32 * c)))
                        : _mm512_loadu_ps((const float *)p + 16 * c);
}

// The key at k (elements of elemBytes) rotated by its position's tables, 16 lanes per chunk
// c: k' = c2 * k + s2 * swap(k). Decode and prompt attention both rotate through here.
AVX512 INLINE __m512 rotate_key16(const uint8_t *k, int elemBytes, int c, const float *cs, const float *sn) {
    const __m512i swap = _mm512_setr_epi32(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512 sign = _mm512_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1);
    __m512 kv;
    load_row16(k, elemBytes, c, &kv);
    __m512 c2 = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(cs + 8 * c)));
    __m512 s2 = _mm512_mul_ps(sign, _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(sn + 8 * c))));
    return _mm512_fmadd_ps(c2, kv, _mm512_mul_ps(s2, _mm512_permutexvar_ps(swap, kv)));
}

// The sums of 16 vectors' lanes, in one vector (lane t: v[t]'s sum), each added by the same
// halving tree whichever vectors it is reduced with: lanes i + (i + 8), then i + (i + 4), then
// i + (i + 2), then 0 + 1. Four shuffle-and-add stages and a final permutation, about 3 ops a
// sum against 8 for reducing each vector on its own.
AVX512 INLINE __m512 sum16x16(const __m512 v[16]) {
    __m512 s[8], u[4], w[2];
    for (int t = 0; t < 8; t++)  // [v.lo8 + v.hi8 of v[2t] | of v[2t+1]]
        s[t] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * t], v[2 * t + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * t], v[2 * t + 1], 0xee));
    for (int t = 0; t < 4; t++)  // 128-bit lane k: vector 4t + k's four partial sums
        u[t] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * t], s[2 * t + 1], 0x88),
                             _mm512_shuffle_f32x4(s[2 * t], s[2 * t + 1], 0xdd));
    for (int t = 0; t < 2; t++)
        w[t] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * t], u[2 * t + 1], 0x44),
                             _mm512_shuffle_ps(u[2 * t], u[2 * t + 1], 0xee));
    __m512 z = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xdd));
    // z's element 4k + e is vector 4e + k's sum
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), z);
}

// One query's scaled scores against 16 rotated keys (rows headDim floats apart, nv chunks of
// 16 each): lane t is (q . key t) * scale, the products summed lane-wise chunk by chunk, then by
// sum16x16. Decode and prompt attention both score through here.
AVX512 INLINE __m512 scores16(const float *q, const float *keys, int headDim, int nv, float scale) {
    __m512 acc[16];
    for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
    for (int c = 0; c < nv; c++) {
        __m512 qc = _mm512_loadu_ps(q + 16 * c);
        for (int t = 0; t < 16; t++)
            acc[t] = _mm512_fmadd_ps(qc, _mm512_loadu_ps(keys + (size_t)t * headDim + 16 * c), acc[t]);
    }
    return _mm512_mul_ps(sum16x16(acc), _mm512_set1_ps(scale));
}

// s[0..T) = e^(s - mx) in place; returns 1 / their sum.
AVX512 INLINE float softmax16(float *sj, int T, float mx) {
    __m512 m = _mm512_set1_ps(mx), sum = _mm512_setzero_ps();
    int t = 0;
    for (; t + 16 <= T; t += 16) {
        __m512 e = exp_nonpositive_avx512(_mm512_sub_ps(_mm512_loadu_ps(sj + t), m));
        _mm512_storeu_ps(sj + t, e);
        sum = _mm512_add_ps(sum, e);
    }
    if (t < T) {
        __mmask16 tail = (__mmask16)((1u << (T - t)) - 1);
        __m512 e = exp_nonpositive_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, sj + t), m));
        _mm512_mask_storeu_ps(sj + t, tail, e);
        sum = _mm512_mask_add_ps(sum, tail, sum, e);
    }
    return 1.0f / _mm512_reduce_add_ps(sum);
}

// out[0 .. 16 NV) = sum over slots t < T of (p[t] * inv) * value t, slot after slot, for one
// head: the accumulators stay in registers (NV a constant after inlining). Values from the
// cache's runs (offset elements into each row, rows rowBytes apart). Decode attention weighs
// values through here; prompt attention through weigh_values_heads, the same operations.
AVX512 INLINE void weigh_values(int NV, const float *p, float inv, const kvt_kv_run *runs, size_t offset,
                                int elemBytes, size_t rowBytes, int T, float *out) {
    __m512 o[16];
    for (int c = 0; c < NV; c++) o[c] = _mm512_setzero_ps();
    for (int t = 0, r = 0; t < T; r++) {
        const uint8_t *v = (const uint8_t *)runs[r].v + offset * (size_t)elemBytes;
        int end = t + (int)runs[r].count < T ? t + (int)runs[r].count : T;
        for (; t < end; t++, v += rowBytes) {
            __m512 w = _mm512_set1_ps(p[t] * inv);
            for (int c = 0; c < NV; c++) {
                __m512 vv;
                load_row16(v, elemBytes, c, &vv);
                o[c] = _mm512_fmadd_ps(w, vv, o[c]);
            }
        }
    }
    for (int c = 0; c < NV; c++) _mm512_storeu_ps(out + 16 * c, o[c]);
}

// weigh_values with NV the head's 16-lane chunks, specialised for the common head sizes.
AVX512 static void weigh_values_any(int nv, const float *p, float inv, const kvt_kv_run *runs, size_t offset,
                                    int elemBytes, size_t rowBytes, int T, float *out) {
    switch (nv) {
    case 4: weigh_values(4, p, inv, runs, offset, elemBytes, rowBytes, T, out); return;
    case 8: weigh_values(8, p, inv, runs, offset, elemBytes, rowBytes, T, out); return;
    default: weigh_values(nv, p, inv, runs, offset, elemBytes, rowBytes, T, out); return;
    }
}

// weigh_values on F32 values for NQ heads of one query row at once (NQ * NV <= 16): each value
// row is read once for all of them, and every head's accumulators see the operations, in the
// order, weigh_values gives that head alone (so the same bits). Head j's probabilities are at
// p + j * ldp, its output at out + j * ldo.
AVX512 INLINE void weigh_values_heads(int NQ, int NV, const float *p, size_t ldp, const float *inv,
                                      const float *values, int headDim, int T, float *out, size_t ldo) {
    __m512 o[16];  // head j's chunk c at j * NV + c
    for (int k = 0; k < NQ * NV; k++) o[k] = _mm512_setzero_ps();
    for (int t = 0; t < T; t++) {
        __m512 w[16];
        for (int j = 0; j < NQ; j++) w[j] = _mm512_set1_ps(p[(size_t)j * ldp + t] * inv[j]);
        for (int c = 0; c < NV; c++) {
            __m512 vv = _mm512_loadu_ps(values + (size_t)t * headDim + 16 * c);
            for (int j = 0; j < NQ; j++) o[j * NV + c] = _mm512_fmadd_ps(w[j], vv, o[j * NV + c]);
        }
    }
    for (int j = 0; j < NQ; j++)
        for (int c = 0; c < NV; c++) _mm512_storeu_ps(out + (size_t)j * ldo + 16 * c, o[j * NV + c]);
}

// One query row's nq heads over T F32 value rows: heads of 64 lanes four at a time, of 128
// lanes two at a time, others one by one.
AVX512 static void weigh_values_row(int nv, int nq, const float *p, size_t ldp, const float *inv,
                                    const float *values, int headDim, int T, float *out, size_t ldo) {
#define HEADS(NQ, NV) \
    weigh_values_heads(NQ, NV, p + (size_t)j * ldp, ldp, inv + j, values, headDim, T, out + (size_t)j * ldo, ldo)
    int j = 0;
    if (nv == 4) {
        for (; j + 4 <= nq; j += 4) HEADS(4, 4);
        switch (nq - j) {
        case 3: HEADS(3, 4); break;
        case 2: HEADS(2, 4); break;
        case 1: HEADS(1, 4); break;
        default: break;
        }
    } else if (nv == 8) {
        for (; j + 2 <= nq; j += 2) HEADS(2, 8);
        if (j < nq) HEADS(1, 8);
    } else {
        for (; j < nq; j++) HEADS(1, nv);
    }
#undef HEADS
}

AVX512 void kvt_attend_group_avx512(const float *q, size_t ldq, int nq, const kvt_kv_run *runs, size_t offset,
                                    int elemBytes, size_t ld, const int32_t *pos, int T, int headDim, float scale,
                                    const float *cosTable, const float *sinTable, float *scores, float *out,
                                    size_t ldo) {
    int nv = headDim / 16, half = headDim / 2;
    size_t rowBytes = ld * (size_t)elemBytes;
    float tile[16 * 256];  // 16 rotated keys; rows past T stay zero
    __m512 mx[16];
    for (int j = 0; j < nq; j++) mx[j] = _mm512_set1_ps(-INFINITY);
    int r = 0, inRun = 0;
    for (int t0 = 0; t0 < T; t0 += 16) {
        int n = T - t0 < 16 ? T - t0 : 16;
        for (int i = 0; i < n; i++, inRun++) {
            while (inRun >= runs[r].count) r++, inRun = 0;
            const uint8_t *k = (const uint8_t *)runs[r].k + (offset + (size_t)inRun * ld) * (size_t)elemBytes;
            int t = t0 + i;
            const float *cs = cosTable + (size_t)pos[t] * half, *sn = sinTable + (size_t)pos[t] * half;
            for (int c = 0; c < nv; c++)
                _mm512_storeu_ps(tile + i * headDim + 16 * c, rotate_key16(k, elemBytes, c, cs, sn));
        }
        for (int i = n; i < 16; i++)
            for (int c = 0; c < nv; c++) _mm512_storeu_ps(tile + i * headDim + 16 * c, _mm512_setzero_ps());
        __mmask16 valid = (__mmask16)((1u << n) - 1);
        for (int j = 0; j < nq; j++) {
            __m512 sc = scores16(q + (size_t)j * ldq, tile, headDim, nv, scale);
            _mm512_mask_storeu_ps(scores + (size_t)j * T + t0, valid, sc);
            mx[j] = _mm512_mask_max_ps(mx[j], valid, mx[j], sc);
        }
    }
    for (int j = 0; j < nq; j++) {
        float inv = softmax16(scores + (size_t)j * T, T, _mm512_reduce_max_ps(mx[j]));
        weigh_values_any(nv, scores + (size_t)j * T, inv, runs, offset, elemBytes, rowBytes, T, out + (size_t)j * ldo);
    }
}

// Prompt attention: m consecutive query rows, row i seeing the first T0 + i slots, each
// (row, head) given exactly the operations kvt_attend_group_avx512 gives it (the same helpers
// in the same order: keys rotated by rotate_key16, scored 16 at a time by scores16, softmax16,
// values accumulated slot by slot), so a prompt's rows are the bits decoding them one by one
// gives. The keys are rotated and the values converted once into keys / values (T0 + m - 1
// rows of headDim floats, keys rounded up to a multiple of 16 rows with zeros) instead of once
// per row.
AVX512 void kvt_attend_rows_avx512(const float *q, size_t ldqRow, size_t ldq, int nq, int m, const kvt_kv_run *runs,
                                   size_t offset, int elemBytes, size_t ld, const int32_t *pos, int T0, int headDim,
                                   float scale, const float *cosTable, const float *sinTable, float *keys,
                                   float *values, float *scores, float *out, size_t ldoRow, size_t ldo) {
    int nv = headDim / 16, half = headDim / 2, T = T0 + m - 1;
    size_t rowBytes = ld * (size_t)elemBytes;
    for (int t = 0, r = 0; t < T; r++) {
        const uint8_t *k = (const uint8_t *)runs[r].k + offset * (size_t)elemBytes;
        const uint8_t *v = (const uint8_t *)runs[r].v + offset * (size_t)elemBytes;
        int end = t + (int)runs[r].count < T ? t + (int)runs[r].count : T;
        for (; t < end; t++, k += rowBytes, v += rowBytes) {
            const float *cs = cosTable + (size_t)pos[t] * half, *sn = sinTable + (size_t)pos[t] * half;
            for (int c = 0; c < nv; c++) {
                _mm512_storeu_ps(keys + (size_t)t * headDim + 16 * c, rotate_key16(k, elemBytes, c, cs, sn));
                __m512 vv;
                load_row16(v, elemBytes, c, &vv);
                _mm512_storeu_ps(values + (size_t)t * headDim + 16 * c, vv);
            }
        }
    }
    for (int t = T; t % 16 != 0; t++)
        for (int c = 0; c < nv; c++) _mm512_storeu_ps(keys + (size_t)t * headDim + 16 * c, _mm512_setzero_ps());
    for (int i = 0; i < m; i++) {
        int Ti = T0 + i;
        const float *qi = q + (size_t)i * ldqRow;
        float inv[16];
        __m512 mx[16];
        for (int j = 0; j < nq; j++) mx[j] = _mm512_set1_ps(-INFINITY);
        // Tile by tile, every head of the group: a tile of 16 keys is read from L1 by all of them.
        for (int t0 = 0; t0 < Ti; t0 += 16) {
            int n = Ti - t0 < 16 ? Ti - t0 : 16;
            __mmask16 valid = (__mmask16)((1u << n) - 1);
            for (int j = 0; j < nq; j++) {
                __m512 sc = scores16(qi + (size_t)j * ldq, keys + (size_t)t0 * headDim, headDim, nv, scale);
                _mm512_mask_storeu_ps(scores + (size_t)j * Ti + t0, valid, sc);
                mx[j] = _mm512_mask_max_ps(mx[j], valid, mx[j], sc);
            }
        }
        for (int j = 0; j < nq; j++) inv[j] = softmax16(scores + (size_t)j * Ti, Ti, _mm512_reduce_max_ps(mx[j]));
        weigh_values_row(nv, nq, scores, (size_t)Ti, inv, values, headDim, Ti, out + (size_t)i * ldoRow, ldo);
    }
}

AVX2 float kvt_dot_f32_avx2(const float *a, const float *b, int n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    float s = hsum256(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

AVX2 float kvt_dot_f_avx2(int type, const void *w, const float *x, int n) {
    if (type == KVT_TYPE_F32) return kvt_dot_f32_avx2((const float *)w, x, n);
    if (type == KVT_TYPE_F16) {
        const uint16_t *h = (const uint16_t *)w;
        __m256 acc = _mm256_setzero_ps();
        int i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256 wf = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i)));
            acc = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x + i), acc);
        }
        float s = hsum256(acc);
        for (; i < n; i++) s += _cvtsh_ss(h[i]) * x[i];
        return s;
    }
    return kvt_dot_f_portable(type, w, x, n);
}

// One Q4_1 block's 16 nibble bytes at q into 32 floats d * q + m.
AVX2 INLINE void q4_1_block_avx2(const uint8_t *q, float df, float mf, float *o) {
    __m256 d = _mm256_set1_ps(df), m = _mm256_set1_ps(mf);
    __m128i raw = _mm_loadu_si128((const __m128i *)q);
    __m128i lo = _mm_and_si128(raw, _mm_set1_epi8(0x0f));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f));
    _mm256_storeu_ps(o, _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), m));
    _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), m));
    _mm256_storeu_ps(o + 16, _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), m));
    _mm256_storeu_ps(o + 24, _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), m));
}

// One Q8_0 block's 32 signed bytes at q into 32 floats d * q.
AVX2 INLINE void q8_0_block_avx2(const uint8_t *q, float df, float *o) {
    __m256 d = _mm256_set1_ps(df);
    for (int k = 0; k < 4; k++) {
        __m128i v = _mm_loadl_epi64((const __m128i *)(q + 8 * k));
        _mm256_storeu_ps(o + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))));
    }
}

AVX2 void kvt_dequantize_row_avx2(int type, const void *src, float *dst, int n) {
    const uint8_t *p = (const uint8_t *)src;
    switch (type) {
    case KVT_TYPE_Q4_1:
        for (int b = 0; b < n / 32; b++, p += 20)
            q4_1_block_avx2(p + 4, _cvtsh_ss(load_u16(p)), _cvtsh_ss(load_u16(p + 2)), dst + b * 32);
        return;
    case KVT_TYPE_Q8_0:
        for (int b = 0; b < n / 32; b++, p += 34) q8_0_block_avx2(p + 2, _cvtsh_ss(load_u16(p)), dst + b * 32);
        return;
    case KVT_TYPE_Q4_1_R:
        for (int b = 0; b < n / 32; b++, p += 24)
            q4_1_block_avx2(p + 8, kvt_load_f32(p), kvt_load_f32(p + 4), dst + b * 32);
        return;
    case KVT_TYPE_Q8_0_R:
        for (int b = 0; b < n / 32; b++, p += 36) q8_0_block_avx2(p + 4, kvt_load_f32(p), dst + b * 32);
        return;
    case KVT_TYPE_F16:
        kvt_f16_to_f32_avx2((const uint16_t *)src, dst, (size_t)n);
        return;
    default:
        kvt_dequantize_row_portable(type, src, dst, n);
        return;
    }
}

AVX2 void kvt_f16_to_f32_avx2(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    }
    for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
}

AVX2 void kvt_f32_to_f16_avx2(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

#endif
