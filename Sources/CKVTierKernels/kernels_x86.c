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
        __m256 t = block_sum_avx2(_mm_loadu_si128((const __m128i *)(p + 2)), _mm_loadu_si128((const __m128i *)(p + 18)), x);
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

// AVX-512: one block is two 16-lane halves (weights 0..15 and 16..31), expanded with
// vpmovzxbd/vpmovsxbd. vpermps reads only the low 4 bits of each index, so a nibble becomes
// its float by a lookup in a 16-entry table (0..15, or -8..7 for Q4_0) without masking or
// converting; Q4_1's high nibbles are shifted and converted instead, which spreads the work
// over the shuffle and the convert units.
AVX512 INLINE void block_avx512(int type, const uint8_t *p, __m512 x0, __m512 x1, const float *xs, __m512 *acc, __m128 *accm) {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 lo, hi, d;
    if (type == KVT_TYPE_Q8_0) {
        lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 2))));
        hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 18))));
        d = _mm512_broadcastss_ps(load_h1(p));
    } else if (type == KVT_TYPE_Q4_0) {
        const __m512 table = _mm512_sub_ps(iota, _mm512_set1_ps(8.0f));
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 2)));
        lo = _mm512_permutexvar_ps(q, table);
        hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
        d = _mm512_broadcastss_ps(load_h1(p));
    } else {  // Q4_1
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 4)));
        lo = _mm512_permutexvar_ps(q, iota);
        hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4));
        __m128 dm = load_h2(p);
        d = _mm512_broadcastss_ps(dm);
        *accm = _mm_fmadd_ss(_mm_movehdup_ps(dm), _mm_load_ss(xs), *accm);
    }
    __m512 t = _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
    *acc = _mm512_fmadd_ps(d, t, *acc);
}

// The sum of a row's 16 lanes, in the order the four-row reduction below uses.
AVX512 static inline float reduce1_avx512(__m512 a) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
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
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), v));
}

// One row's blocks into four accumulators (block b into a[b % 4]) so that the FMA latency
// chains overlap; returns them summed as (a0 + a1) + (a2 + a3).
AVX512 INLINE __m512 row_avx512(int type, const uint8_t *p, const float *x, const float *xs, int nb, __m128 *accm) {
    const int bs = type == KVT_TYPE_Q4_1 ? 20 : type == KVT_TYPE_Q4_0 ? 18 : 34;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m128 m0 = _mm_setzero_ps(), m1 = m0, m2 = m0, m3 = m0;
    int b = 0;
    for (; b + 4 <= nb; b += 4, p += 4 * bs, x += 128) {
        block_avx512(type, p, _mm512_loadu_ps(x), _mm512_loadu_ps(x + 16), xs + b, &a0, &m0);
        block_avx512(type, p + bs, _mm512_loadu_ps(x + 32), _mm512_loadu_ps(x + 48), xs + b + 1, &a1, &m1);
        block_avx512(type, p + 2 * bs, _mm512_loadu_ps(x + 64), _mm512_loadu_ps(x + 80), xs + b + 2, &a2, &m2);
        block_avx512(type, p + 3 * bs, _mm512_loadu_ps(x + 96), _mm512_loadu_ps(x + 112), xs + b + 3, &a3, &m3);
    }
    for (; b < nb; b++, p += bs, x += 32) block_avx512(type, p, _mm512_loadu_ps(x), _mm512_loadu_ps(x + 16), xs + b, &a0, &m0);
    *accm = _mm_add_ss(_mm_add_ss(m0, m1), _mm_add_ss(m2, m3));
    return _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
}

// Rows one after the other (one stream for the prefetchers); the horizontal sums of four rows
// are done together, each exactly as a lone row's would be.
AVX512 INLINE void rows_avx512(int type, const uint8_t *p, size_t rowBytes, int rows, const float *x, const float *xs,
                               int nb, float *out) {
    int r = 0;
    for (; r + 4 <= rows; r += 4, p += 4 * rowBytes) {
        __m128 m0, m1, m2, m3;
        __m512 a0 = row_avx512(type, p, x, xs, nb, &m0);
        __m512 a1 = row_avx512(type, p + rowBytes, x, xs, nb, &m1);
        __m512 a2 = row_avx512(type, p + 2 * rowBytes, x, xs, nb, &m2);
        __m512 a3 = row_avx512(type, p + 3 * rowBytes, x, xs, nb, &m3);
        __m128 s = reduce4_avx512(a0, a1, a2, a3);
        if (type == KVT_TYPE_Q4_1) s = _mm_add_ps(s, _mm_movelh_ps(_mm_unpacklo_ps(m0, m1), _mm_unpacklo_ps(m2, m3)));
        _mm_storeu_ps(out + r, s);
    }
    for (; r < rows; r++, p += rowBytes) {
        __m128 m;
        float s = reduce1_avx512(row_avx512(type, p, x, xs, nb, &m));
        if (type == KVT_TYPE_Q4_1) s += _mm_cvtss_f32(m);
        out[r] = s;
    }
}

// Several activation vectors against the same rows (a batched decode step). A block is decoded
// once (its integers as floats, d, and Q4_1's m) and used for up to four activations; for each
// activation the operations are exactly those of row_avx512 and rows_avx512 (the same fused
// multiply-adds into the same four accumulators, block b into a[b % 4] and the tail into a[0],
// the same reductions), so each result is bit-identical to a lone kvt_matvec of that activation.
// Q4_1's m terms are kept per activation in the four lanes of one vector (lane k for blocks
// b % 4 == k): a lane-wise fused multiply-add is the scalar one, lane by lane.
AVX512 INLINE void decode_block_avx512(int type, const uint8_t *p, __m512 *lo, __m512 *hi, __m512 *d, float *m) {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    if (type == KVT_TYPE_Q8_0) {
        *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 2))));
        *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 18))));
        *d = _mm512_broadcastss_ps(load_h1(p));
    } else if (type == KVT_TYPE_Q4_0) {
        const __m512 table = _mm512_sub_ps(iota, _mm512_set1_ps(8.0f));
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 2)));
        *lo = _mm512_permutexvar_ps(q, table);
        *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
        *d = _mm512_broadcastss_ps(load_h1(p));
    } else {  // Q4_1
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 4)));
        *lo = _mm512_permutexvar_ps(q, iota);
        *hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4));
        __m128 dm = load_h2(p);
        *d = _mm512_broadcastss_ps(dm);
        *m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
    }
}

// R (1..4, a constant after inlining) activations x[i * ldx] against one row at p.
AVX512 INLINE void row_multi_avx512(int type, int R, const uint8_t *p, const float *x, size_t ldx, const float *xs, size_t ldxs,
                                    int nb, float *out, size_t ldo) {
    const int bs = type == KVT_TYPE_Q4_1 ? 20 : type == KVT_TYPE_Q4_0 ? 18 : 34;
    __m512 acc[4][4];
    __m128 accm[4];
    for (int i = 0; i < R; i++) {
        for (int k = 0; k < 4; k++) acc[i][k] = _mm512_setzero_ps();
        accm[i] = _mm_setzero_ps();
    }
    int b = 0;
    for (; b + 4 <= nb; b += 4) {
        float mv[4];
        for (int k = 0; k < 4; k++) {
            __m512 lo, hi, d;
            decode_block_avx512(type, p + (b + k) * bs, &lo, &hi, &d, &mv[k]);
            for (int i = 0; i < R; i++) {
                const float *xi = x + i * ldx + (b + k) * 32;
                __m512 t = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xi + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xi)));
                acc[i][k] = _mm512_fmadd_ps(d, t, acc[i][k]);
            }
        }
        if (type == KVT_TYPE_Q4_1) {
            __m128 m4 = _mm_loadu_ps(mv);
            for (int i = 0; i < R; i++) accm[i] = _mm_fmadd_ps(m4, _mm_loadu_ps(xs + i * ldxs + b), accm[i]);
        }
    }
    for (; b < nb; b++) {
        __m512 lo, hi, d;
        float m1 = 0;
        decode_block_avx512(type, p + b * bs, &lo, &hi, &d, &m1);
        for (int i = 0; i < R; i++) {
            const float *xi = x + i * ldx + b * 32;
            __m512 t = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xi + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xi)));
            acc[i][0] = _mm512_fmadd_ps(d, t, acc[i][0]);
            // _mm_fmadd_ss takes lanes 1..3 from its first operand: keep accm's.
            if (type == KVT_TYPE_Q4_1)
                accm[i] = _mm_move_ss(accm[i], _mm_fmadd_ss(_mm_set_ss(m1), _mm_load_ss(xs + i * ldxs + b), accm[i]));
        }
    }
    for (int i = 0; i < R; i++) {
        float s = reduce1_avx512(_mm512_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]), _mm512_add_ps(acc[i][2], acc[i][3])));
        if (type == KVT_TYPE_Q4_1) {
            float l[4];
            _mm_storeu_ps(l, accm[i]);
            s += (l[0] + l[1]) + (l[2] + l[3]);
        }
        out[i * ldo] = s;
    }
}

// Rows in tiles of 16 (in L1 while every activation uses them), activations four at a time.
AVX512 INLINE void rows_multi_avx512(int type, const uint8_t *p, size_t rowBytes, int rows, const float *x, size_t ldx,
                                     const float *xs, size_t ldxs, int m, int nb, float *out, size_t ldo) {
    for (int t0 = 0; t0 < rows; t0 += 16) {
        int t1 = t0 + 16 < rows ? t0 + 16 : rows;
        int i = 0;
        for (; i + 4 <= m; i += 4)
            for (int r = t0; r < t1; r++)
                row_multi_avx512(type, 4, p + (size_t)r * rowBytes, x + i * ldx, ldx, xs + i * ldxs, ldxs, nb, out + i * ldo + r, ldo);
        int left = m - i;
        for (int r = t0; r < t1 && left > 0; r++) {
            const uint8_t *row = p + (size_t)r * rowBytes;
            if (left == 3) row_multi_avx512(type, 3, row, x + i * ldx, ldx, xs + i * ldxs, ldxs, nb, out + i * ldo + r, ldo);
            else if (left == 2) row_multi_avx512(type, 2, row, x + i * ldx, ldx, xs + i * ldxs, ldxs, nb, out + i * ldo + r, ldo);
            else row_multi_avx512(type, 1, row, x + i * ldx, ldx, xs + i * ldxs, ldxs, nb, out + i * ldo + r, ldo);
        }
    }
}

AVX512 void kvt_matvec_rows_qf_avx512(int type, const void *w, size_t rowBytes, int r0, int r1, int n, const float *x, size_t ldx,
                                      const float *xsum, size_t ldxsum, int m, float *out, size_t ldo) {
    const uint8_t *base = (const uint8_t *)w + (size_t)r0 * rowBytes;
    int nb = n / 32, rows = r1 - r0;
    switch (type) {
    case KVT_TYPE_Q4_1: rows_multi_avx512(KVT_TYPE_Q4_1, base, rowBytes, rows, x, ldx, xsum, ldxsum, m, nb, out, ldo); return;
    case KVT_TYPE_Q4_0: rows_multi_avx512(KVT_TYPE_Q4_0, base, rowBytes, rows, x, ldx, xsum, ldxsum, m, nb, out, ldo); return;
    case KVT_TYPE_Q8_0: rows_multi_avx512(KVT_TYPE_Q8_0, base, rowBytes, rows, x, ldx, xsum, ldxsum, m, nb, out, ldo); return;
    default:
        for (int i = 0; i < m; i++)
            for (int r = 0; r < rows; r++) out[i * ldo + r] = 0.0f;
        return;
    }
}

AVX512 void kvt_matvec_qf_avx512(int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                                 const float *x, const float *xsum, float *out) {
    const uint8_t *base = (const uint8_t *)w + (size_t)r0 * rowBytes;
    int nb = n / 32, rows = r1 - r0;
    switch (type) {
    case KVT_TYPE_Q4_1: rows_avx512(KVT_TYPE_Q4_1, base, rowBytes, rows, x, xsum, nb, out); return;
    case KVT_TYPE_Q4_0: rows_avx512(KVT_TYPE_Q4_0, base, rowBytes, rows, x, xsum, nb, out); return;
    case KVT_TYPE_Q8_0: rows_avx512(KVT_TYPE_Q8_0, base, rowBytes, rows, x, xsum, nb, out); return;
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

AVX2 void kvt_dequantize_row_avx2(int type, const void *src, float *dst, int n) {
    const uint8_t *p = (const uint8_t *)src;
    switch (type) {
    case KVT_TYPE_Q4_1:
        for (int b = 0; b < n / 32; b++, p += 20) {
            __m256 d = _mm256_set1_ps(_cvtsh_ss(load_u16(p))), m = _mm256_set1_ps(_cvtsh_ss(load_u16(p + 2)));
            __m128i raw = _mm_loadu_si128((const __m128i *)(p + 4));
            __m128i lo = _mm_and_si128(raw, _mm_set1_epi8(0x0f));
            __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f));
            float *o = dst + b * 32;
            _mm256_storeu_ps(o, _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), m));
            _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), m));
            _mm256_storeu_ps(o + 16, _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), m));
            _mm256_storeu_ps(o + 24, _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), m));
        }
        return;
    case KVT_TYPE_Q8_0:
        for (int b = 0; b < n / 32; b++, p += 34) {
            __m256 d = _mm256_set1_ps(_cvtsh_ss(load_u16(p)));
            float *o = dst + b * 32;
            for (int k = 0; k < 4; k++) {
                __m128i q = _mm_loadl_epi64((const __m128i *)(p + 2 + 8 * k));
                _mm256_storeu_ps(o + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
            }
        }
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
