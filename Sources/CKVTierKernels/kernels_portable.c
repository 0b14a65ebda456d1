// Portable reference implementations. Every SIMD path must agree with these
// (bit-exact for conversions, to float rounding for dot products).
#include "kernels_internal.h"

#include <math.h>
#include <string.h>

float kvt_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: normalize
            exp = 127 - 15 + 1;
            while ((mant & 0x400) == 0) {
                mant <<= 1;
                exp--;
            }
            mant &= 0x3ff;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t kvt_float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx >= 0x7f800000) {  // inf or nan
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000 ? 0x200 : 0));
    }
    if (absx >= 0x477ff000) {  // rounds to >= 65520: overflow to inf
        return (uint16_t)(sign | 0x7c00);
    }
    if (absx < 0x38800000) {  // below the smallest normal half: subnormal or zero
        if (absx < 0x33000000) return (uint16_t)sign;  // < 2^-25 rounds to zero
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e;  // 14 + (113 - e)
        uint32_t hm = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (hm & 1))) hm++;
        return (uint16_t)(sign | hm);
    }
    uint32_t e = (absx >> 23) - 127 + 15;
    uint32_t m = absx & 0x7fffff;
    uint32_t h = (e << 10) | (m >> 13);
    uint32_t rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;  // may carry into the exponent: correct
    return (uint16_t)(sign | h);
}

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t load_u16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

float kvt_dot_qf_portable(int type, const void *w, const float *x, const float *xsum, int n) {
    const uint8_t *p = (const uint8_t *)w;
    int nb = n / 32;
    float acc = 0.0f;
    switch (type) {
    // The repacked types compute exactly as their raw ones (the same values, in the same order).
    case KVT_TYPE_Q4_1_R:
        for (int b = 0; b < nb; b++, p += 24, x += 32) {
            float d = kvt_load_f32(p), m = kvt_load_f32(p + 4);
            const uint8_t *qs = p + 8;
            float s = 0.0f;
            for (int j = 0; j < 16; j++) s += (float)(qs[j] & 0x0f) * x[j] + (float)(qs[j] >> 4) * x[j + 16];
            acc += d * s + m * xsum[b];
        }
        break;
    case KVT_TYPE_Q4_0_R:
        for (int b = 0; b < nb; b++, p += 20, x += 32) {
            float d = kvt_load_f32(p);
            const uint8_t *qs = p + 4;
            float s = 0.0f;
            for (int j = 0; j < 16; j++) {
                s += (float)((qs[j] & 0x0f) - 8) * x[j] + (float)((qs[j] >> 4) - 8) * x[j + 16];
            }
            acc += d * s;
        }
        break;
    case KVT_TYPE_Q8_0_R:
        for (int b = 0; b < nb; b++, p += 36, x += 32) {
            float d = kvt_load_f32(p);
            const int8_t *qs = (const int8_t *)(p + 4);
            float s = 0.0f;
            for (int j = 0; j < 32; j++) s += (float)qs[j] * x[j];
            acc += d * s;
        }
        break;
    case KVT_TYPE_Q4_1:
        for (int b = 0; b < nb; b++, p += 20, x += 32) {
            float d = kvt_half_to_float(load_u16(p)), m = kvt_half_to_float(load_u16(p + 2));
            const uint8_t *qs = p + 4;
            float s = 0.0f;
            for (int j = 0; j < 16; j++) s += (float)(qs[j] & 0x0f) * x[j] + (float)(qs[j] >> 4) * x[j + 16];
            acc += d * s + m * xsum[b];
        }
        break;
    case KVT_TYPE_Q4_0:
        for (int b = 0; b < nb; b++, p += 18, x += 32) {
            float d = kvt_half_to_float(load_u16(p));
            const uint8_t *qs = p + 2;
            float s = 0.0f;
            for (int j = 0; j < 16; j++) {
                s += (float)((qs[j] & 0x0f) - 8) * x[j] + (float)((qs[j] >> 4) - 8) * x[j + 16];
            }
            acc += d * s;
        }
        break;
    case KVT_TYPE_Q8_0:
        for (int b = 0; b < nb; b++, p += 34, x += 32) {
            float d = kvt_half_to_float(load_u16(p));
            const int8_t *qs = (const int8_t *)(p + 2);
            float s = 0.0f;
            for (int j = 0; j < 32; j++) s += (float)qs[j] * x[j];
            acc += d * s;
        }
        break;
    default:
        break;
    }
    return acc;
}

void kvt_dequantize_row_portable(int type, const void *src, float *dst, int n) {
    const uint8_t *p = (const uint8_t *)src;
    switch (type) {
    case KVT_TYPE_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case KVT_TYPE_F16:
        for (int i = 0; i < n; i++) dst[i] = kvt_half_to_float(load_u16(p + 2 * i));
        break;
    case KVT_TYPE_BF16:
        for (int i = 0; i < n; i++) dst[i] = bf16_to_float(load_u16(p + 2 * i));
        break;
    case KVT_TYPE_Q4_1:
        for (int b = 0; b < n / 32; b++, p += 20) {
            float d = kvt_half_to_float(load_u16(p)), m = kvt_half_to_float(load_u16(p + 2));
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = d * (float)(p[4 + j] & 0x0f) + m;
                dst[b * 32 + j + 16] = d * (float)(p[4 + j] >> 4) + m;
            }
        }
        break;
    case KVT_TYPE_Q4_0:
        for (int b = 0; b < n / 32; b++, p += 18) {
            float d = kvt_half_to_float(load_u16(p));
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = d * (float)((p[2 + j] & 0x0f) - 8);
                dst[b * 32 + j + 16] = d * (float)((p[2 + j] >> 4) - 8);
            }
        }
        break;
    case KVT_TYPE_Q8_0:
        for (int b = 0; b < n / 32; b++, p += 34) {
            float d = kvt_half_to_float(load_u16(p));
            for (int j = 0; j < 32; j++) dst[b * 32 + j] = d * (float)(int8_t)p[2 + j];
        }
        break;
    case KVT_TYPE_Q4_1_R:
        for (int b = 0; b < n / 32; b++, p += 24) {
            float d = kvt_load_f32(p), m = kvt_load_f32(p + 4);
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = d * (float)(p[8 + j] & 0x0f) + m;
                dst[b * 32 + j + 16] = d * (float)(p[8 + j] >> 4) + m;
            }
        }
        break;
    case KVT_TYPE_Q4_0_R:
        for (int b = 0; b < n / 32; b++, p += 20) {
            float d = kvt_load_f32(p);
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = d * (float)((p[4 + j] & 0x0f) - 8);
                dst[b * 32 + j + 16] = d * (float)((p[4 + j] >> 4) - 8);
            }
        }
        break;
    case KVT_TYPE_Q8_0_R:
        for (int b = 0; b < n / 32; b++, p += 36) {
            float d = kvt_load_f32(p);
            for (int j = 0; j < 32; j++) dst[b * 32 + j] = d * (float)(int8_t)p[4 + j];
        }
        break;
    default:
        memset(dst, 0, (size_t)n * 4);
        break;
    }
}

float kvt_dot_f_portable(int type, const void *w, const float *x, int n) {
    const uint8_t *p = (const uint8_t *)w;
    float acc = 0.0f;
    switch (type) {
    case KVT_TYPE_F32: {
        const float *f = (const float *)w;
        for (int i = 0; i < n; i++) acc += f[i] * x[i];
        break;
    }
    case KVT_TYPE_F16:
        for (int i = 0; i < n; i++) acc += kvt_half_to_float(load_u16(p + 2 * i)) * x[i];
        break;
    case KVT_TYPE_BF16:
        for (int i = 0; i < n; i++) acc += bf16_to_float(load_u16(p + 2 * i)) * x[i];
        break;
    default:
        break;
    }
    return acc;
}

void kvt_f16_to_f32_portable(const uint16_t *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = kvt_half_to_float(src[i]);
}

void kvt_f32_to_f16_portable(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = kvt_float_to_half(src[i]);
}
