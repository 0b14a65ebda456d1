// x86-64 SIMD paths. Each function carries its own target attribute, so the file
// compiles for any x86-64 and the dispatcher calls a path only when the CPU has it.
#include "kernels_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

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

AVX2 static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

AVX2 void kvt_quantize_q8_avx2(const float *x, kvt_block_q8 *y, int n) {
    const __m256 signBit = _mm256_set1_ps(-0.0f);
    for (int b = 0; b < n / 32; b++) {
        const float *xb = x + b * 32;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        __m256 m = _mm256_andnot_ps(signBit, v0);
        m = _mm256_max_ps(m, _mm256_andnot_ps(signBit, v1));
        m = _mm256_max_ps(m, _mm256_andnot_ps(signBit, v2));
        m = _mm256_max_ps(m, _mm256_andnot_ps(signBit, v3));
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        __m256 mul = _mm256_set1_ps(id);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_hadd_epi32(s4, s4);
        s4 = _mm_hadd_epi32(s4, s4);
        int isum = _mm_cvtsi128_si32(s4);
        // pack 32-bit -> 16-bit -> 8-bit; packs interleave lanes, so fix the order after.
        __m256i p01 = _mm256_packs_epi32(i0, i1);
        __m256i p23 = _mm256_packs_epi32(i2, i3);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[b].qs, p);
        y[b].d = d;
        y[b].s = d * (float)isum;
    }
}

// Unpacks 16 bytes of nibbles: lanes 0..15 = low nibbles, 16..31 = high nibbles.
AVX2 static inline __m256i unpack_nibbles(const uint8_t *qs) {
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(raw, _mm_set1_epi8(0x0f));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f));
    return _mm256_set_m128i(hi, lo);
}

// Sum of u8 x s8 products as 8 int32 lanes.
AVX2 static inline __m256 dot_us8_avx2(__m256i u, __m256i s) {
    __m256i p16 = _mm256_maddubs_epi16(u, s);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

AVX2 float kvt_dot_q_avx2(int type, const void *w, const kvt_block_q8 *x, int n) {
    const uint8_t *p = (const uint8_t *)w;
    int nb = n / 32;
    __m256 acc = _mm256_setzero_ps();
    float accm = 0.0f;
    switch (type) {
    case KVT_TYPE_Q4_1:
        for (int b = 0; b < nb; b++, p += 20) {
            __m256i q = unpack_nibbles(p + 4);
            __m256i xs = _mm256_loadu_si256((const __m256i *)x[b].qs);
            __m256 dd = _mm256_set1_ps(h2f(load_u16(p)) * x[b].d);
            acc = _mm256_fmadd_ps(dd, dot_us8_avx2(q, xs), acc);
            accm += h2f(load_u16(p + 2)) * x[b].s;
        }
        return hsum256(acc) + accm;
    case KVT_TYPE_Q4_0:
        for (int b = 0; b < nb; b++, p += 18) {
            __m256i q = _mm256_sub_epi8(unpack_nibbles(p + 2), _mm256_set1_epi8(8));
            __m256i xs = _mm256_loadu_si256((const __m256i *)x[b].qs);
            __m256 dd = _mm256_set1_ps(h2f(load_u16(p)) * x[b].d);
            acc = _mm256_fmadd_ps(dd, dot_us8_avx2(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xs, q)), acc);
        }
        return hsum256(acc);
    case KVT_TYPE_Q8_0:
        for (int b = 0; b < nb; b++, p += 34) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(p + 2));
            __m256i xs = _mm256_loadu_si256((const __m256i *)x[b].qs);
            __m256 dd = _mm256_set1_ps(h2f(load_u16(p)) * x[b].d);
            acc = _mm256_fmadd_ps(dd, dot_us8_avx2(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xs, q)), acc);
        }
        return hsum256(acc);
    default:
        return kvt_dot_q_portable(type, w, x, n);
    }
}

// AVX-512 VNNI on 256-bit vectors: vpdpbusd replaces the maddubs/madd pair.
AVX512 static inline __m256 dot_us8_vnni(__m256i u, __m256i s) {
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s));
}

AVX512 float kvt_dot_q_avx512(int type, const void *w, const kvt_block_q8 *x, int n) {
    const uint8_t *p = (const uint8_t *)w;
    int nb = n / 32;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float accm = 0.0f;
    switch (type) {
    case KVT_TYPE_Q4_1: {
        int b = 0;
        for (; b + 1 < nb; b += 2, p += 40) {
            __m256i q0 = unpack_nibbles(p + 4), q1 = unpack_nibbles(p + 24);
            __m256i x0 = _mm256_loadu_si256((const __m256i *)x[b].qs);
            __m256i x1 = _mm256_loadu_si256((const __m256i *)x[b + 1].qs);
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(load_u16(p)) * x[b].d), dot_us8_vnni(q0, x0), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(load_u16(p + 20)) * x[b + 1].d), dot_us8_vnni(q1, x1), acc1);
            accm += _cvtsh_ss(load_u16(p + 2)) * x[b].s + _cvtsh_ss(load_u16(p + 22)) * x[b + 1].s;
        }
        for (; b < nb; b++, p += 20) {
            __m256i q = unpack_nibbles(p + 4);
            __m256i xs = _mm256_loadu_si256((const __m256i *)x[b].qs);
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(load_u16(p)) * x[b].d), dot_us8_vnni(q, xs), acc0);
            accm += _cvtsh_ss(load_u16(p + 2)) * x[b].s;
        }
        return hsum256(_mm256_add_ps(acc0, acc1)) + accm;
    }
    case KVT_TYPE_Q8_0:
        for (int b = 0; b < nb; b++, p += 34) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(p + 2));
            __m256i xs = _mm256_loadu_si256((const __m256i *)x[b].qs);
            __m256 dd = _mm256_set1_ps(_cvtsh_ss(load_u16(p)) * x[b].d);
            acc0 = _mm256_fmadd_ps(dd, dot_us8_vnni(_mm256_abs_epi8(q), _mm256_sign_epi8(xs, q)), acc0);
        }
        return hsum256(acc0);
    default:
        return kvt_dot_q_avx2(type, w, x, n);
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
