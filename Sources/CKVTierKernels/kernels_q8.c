// The quantized-activation path: quantized weights interleaved by 16 rows, times activations
// quantized per block of 32 to 16 bits (two signed byte planes) or 8 (one; as llama.cpp's CPU
// kernels multiply Q4/Q8 weights with Q8 activations), through 8-bit VNNI dot products.
//
// Each (weight row, activation vector) pair is computed the same way at every level and
// whatever else is computed with it: per block b, the integer sum
//     isum = sum_j u[j] * q[j]  (- 128 * sum_j q[j] for Q8 weights)
// is exact, and then, block after block,
//     acc  = fma((float)isum, dw * dx, acc)
//     accm = fma(m, s, accm)                (Q4 types; s = dx * sum_j q[j])
// and the result is acc + accm (acc for Q8). The AVX-512 VNNI kernel computes sixteen rows in
// the sixteen lanes of a vector, so a row's operations never mix with another's: a lone decode,
// a batched step and a prompt chunk give the same bits, and so does the portable reference.
#include "kernels_internal.h"

#include <math.h>
#include <string.h>

enum { X16_Q4_BLOCK = 384, X16_Q8_BLOCK = 576 };

static inline int x16_block_bytes(int type) {
    return type == KVT_TYPE_Q4_X16 ? X16_Q4_BLOCK : type == KVT_TYPE_Q8_X16 ? X16_Q8_BLOCK : 0;
}

size_t kvt_x16_row_bytes(int type, int n) { return (size_t)(n / 32) * (size_t)x16_block_bytes(type) / 16; }

// ---------------------------------------------------------------------------------------
// Repacking. Source blocks are GGUF's: Q4_0 = f16 d, 16 bytes; Q4_1 = f16 d, f16 m, 16 bytes
// (byte j: weight j in the low nibble, weight j + 16 in the high one); Q8_0 = f16 d, 32 bytes.

// The 32 unsigned integers of a source block, its d, and its m (Q4_1's offset; -8d for Q4_0,
// whose weights are d * (q - 8); unused for Q8_0, whose integers come back offset by 128).
static void source_block(int type, const uint8_t *p, uint8_t u[32], float *d, float *m) {
    uint16_t h;
    memcpy(&h, p, 2);
    *d = kvt_half_to_float(h);
    if (type == KVT_TYPE_Q8_0) {
        *m = 0;
        for (int k = 0; k < 32; k++) u[k] = (uint8_t)((int)(int8_t)p[2 + k] + 128);
        return;
    }
    const uint8_t *qs = p + (type == KVT_TYPE_Q4_1 ? 4 : 2);
    if (type == KVT_TYPE_Q4_1) {
        memcpy(&h, p + 2, 2);
        *m = kvt_half_to_float(h);
    } else {
        *m = -8.0f * *d;  // exact: a power of two
    }
    for (int k = 0; k < 16; k++) {
        u[k] = qs[k] & 15;
        u[k + 16] = qs[k] >> 4;
    }
}

int kvt_repack_x16(int type, const void *src, size_t srcRowBytes, int rows, int n, void *dst) {
    if (!(type == KVT_TYPE_Q4_0 || type == KVT_TYPE_Q4_1 || type == KVT_TYPE_Q8_0)) return -1;
    if (rows <= 0 || n <= 0 || n % 32 != 0) return -1;
    int out = type == KVT_TYPE_Q8_0 ? KVT_TYPE_Q8_X16 : KVT_TYPE_Q4_X16;
    size_t bs = (size_t)x16_block_bytes(out), srcBlock = kvt_block_bytes(type);
    int nb = n / 32;
    uint8_t *o = (uint8_t *)dst;
    for (int g = 0; g < (rows + 15) / 16; g++) {
        for (int b = 0; b < nb; b++, o += bs) {
            memset(o, 0, bs);
            for (int r = 0; r < 16 && 16 * g + r < rows; r++) {  // padding rows: all zero, weights 0
                const uint8_t *p = (const uint8_t *)src + (size_t)(16 * g + r) * srcRowBytes + (size_t)b * srcBlock;
                uint8_t u[32];
                float d, m;
                source_block(type, p, u, &d, &m);
                memcpy(o + 4 * r, &d, 4);
                if (out == KVT_TYPE_Q8_X16) {
                    for (int k = 0; k < 32; k++) o[64 + 64 * (k / 4) + 4 * r + k % 4] = u[k];
                } else {
                    memcpy(o + 64 + 4 * r, &m, 4);
                    // slice i, row r's dword, byte t: weight 8i + t low, weight 8i + 4 + t high
                    for (int k = 0; k < 32; k++) {
                        int i = k / 8, t = k % 4, high = (k % 8) >= 4;
                        o[128 + 64 * i + 4 * r + t] |= (uint8_t)(u[k] << (high ? 4 : 0));
                    }
                }
            }
        }
    }
    return out;
}

// Weight k (0..31) of the row in `lane` of an interleaved block, as the unsigned integer the
// kernels multiply (Q8: the signed weight plus 128; Q4: the nibble).
static inline int x16_unsigned(int type, const uint8_t *blk, int lane, int k) {
    if (type == KVT_TYPE_Q8_X16) return blk[64 + 64 * (k / 4) + 4 * lane + k % 4];
    uint8_t byte = blk[128 + 64 * (k / 8) + 4 * lane + k % 4];
    return (k % 8) >= 4 ? byte >> 4 : byte & 15;
}

void kvt_dequantize_x16_row(int type, const void *w, size_t rowBytes, int r, int n, float *dst) {
    size_t bs = (size_t)x16_block_bytes(type);
    if (bs == 0) return;
    const uint8_t *g = (const uint8_t *)w + (size_t)(r / 16) * 16 * rowBytes;
    int lane = r % 16;
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *blk = g + (size_t)b * bs;
        float d = kvt_load_f32(blk + 4 * lane);
        for (int k = 0; k < 32; k++) {
            int u = x16_unsigned(type, blk, lane, k);
            dst[32 * b + k] = type == KVT_TYPE_Q8_X16 ? d * (float)(u - 128)
                                                      : fmaf(d, (float)u, kvt_load_f32(blk + 64 + 4 * lane));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Activations.

// The largest |q| for `bits`: 127, or 127 * 256 so that hi = (q - lo) / 256 stays a signed byte.
static inline float q_max(int bits) { return bits == 16 ? 32512.0f : 127.0f; }

// The two byte planes of a 16-bit q: lo = q's low byte as a signed byte, hi = (q - lo) / 256.
static inline void split16(int q, int8_t *hi, int8_t *lo) {
    int l = ((q + 128) & 255) - 128;
    *lo = (int8_t)l;
    *hi = (int8_t)((q - l) / 256);
}

void kvt_quantize_q8_portable(int bits, const float *x, size_t ldx, int m, int n, kvt_q8_block *out) {
    int nb = n / 32;
    float qmax = q_max(bits);
    for (int i = 0; i < m; i++) {
        for (int b = 0; b < nb; b++) {
            const float *xb = x + (size_t)i * ldx + 32 * b;
            kvt_q8_block *o = out + (size_t)i * nb + b;
            float amax = 0;
            for (int k = 0; k < 32; k++) amax = fmaxf(amax, fabsf(xb[k]));
            float d = amax / qmax, id = d != 0 ? 1.0f / d : 0.0f;
            int sum = 0;
            for (int k = 0; k < 32; k++) {
                int q = (int)nearbyintf(fmaxf(-qmax, fminf(qmax, xb[k] * id)));
                if (bits == 16) {
                    split16(q, &o->hi[k], &o->lo[k]);
                } else {
                    o->hi[k] = (int8_t)q;
                    o->lo[k] = 0;
                }
                sum += q;
            }
            o->d = d;
            o->sum = sum;
            o->s = d * (float)sum;
            o->pad = 0;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The portable reference.

void kvt_matvec_q8_portable(int bits, int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                            const kvt_q8_block *x, size_t ldx, int m, float *out, size_t ldo) {
    int nb = n / 32, q8 = type == KVT_TYPE_Q8_X16;
    size_t bs = (size_t)x16_block_bytes(type);
    if (bs == 0) return;
    for (int r = r0; r < r1; r++) {
        const uint8_t *g = (const uint8_t *)w + (size_t)(r / 16) * 16 * rowBytes;
        int lane = r % 16;
        for (int i = 0; i < m; i++) {
            const kvt_q8_block *xb = x + (size_t)i * ldx;
            float acc = 0, accm = 0;
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = g + (size_t)b * bs;
                int32_t isum = 0;
                for (int k = 0; k < 32; k++) {
                    int u = x16_unsigned(type, blk, lane, k);
                    isum += bits == 16 ? u * (256 * xb[b].hi[k] + xb[b].lo[k]) : u * xb[b].hi[k];
                }
                if (q8) isum -= 128 * xb[b].sum;
                float scale = kvt_load_f32(blk + 4 * lane) * xb[b].d;
                acc = fmaf((float)isum, scale, acc);
                if (!q8) accm = fmaf(kvt_load_f32(blk + 64 + 4 * lane), xb[b].s, accm);
            }
            out[(size_t)i * ldo + (r - r0)] = q8 ? acc : acc + accm;
        }
    }
}

// ---------------------------------------------------------------------------------------
// AVX-512 VNNI.

#if defined(__x86_64__)
#include <immintrin.h>

#define VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define INLINE static inline __attribute__((always_inline))

VNNI static void quantize_block_vnni(int bits, const float *xb, kvt_q8_block *o) {
    __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
    float qmax = q_max(bits), d = amax / qmax, id = d != 0 ? 1.0f / d : 0.0f;
    const __m512 lo = _mm512_set1_ps(-qmax), hi = _mm512_set1_ps(qmax), vid = _mm512_set1_ps(id);
    // min(v, qmax) is qmax for a NaN v, as fminf(qmax, v) is in the portable code.
    __m512i q0 = _mm512_cvtps_epi32(_mm512_max_ps(lo, _mm512_min_ps(_mm512_mul_ps(x0, vid), hi)));
    __m512i q1 = _mm512_cvtps_epi32(_mm512_max_ps(lo, _mm512_min_ps(_mm512_mul_ps(x1, vid), hi)));
    int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    if (bits == 16) {
        const __m512i c128 = _mm512_set1_epi32(128), c255 = _mm512_set1_epi32(255);
        __m512i l0 = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(q0, c128), c255), c128);
        __m512i l1 = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(q1, c128), c255), c128);
        _mm_storeu_si128((__m128i *)o->lo, _mm512_cvtepi32_epi8(l0));
        _mm_storeu_si128((__m128i *)(o->lo + 16), _mm512_cvtepi32_epi8(l1));
        q0 = _mm512_srai_epi32(_mm512_sub_epi32(q0, l0), 8);  // exact: q - lo is a multiple of 256
        q1 = _mm512_srai_epi32(_mm512_sub_epi32(q1, l1), 8);
    } else {
        memset(o->lo, 0, 32);
    }
    _mm_storeu_si128((__m128i *)o->hi, _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128((__m128i *)(o->hi + 16), _mm512_cvtepi32_epi8(q1));
    o->d = d;
    o->sum = sum;
    o->s = d * (float)sum;
    o->pad = 0;
}

VNNI void kvt_quantize_q8_vnni(int bits, const float *x, size_t ldx, int m, int n, kvt_q8_block *out) {
    int nb = n / 32;
    for (int i = 0; i < m; i++)
        for (int b = 0; b < nb; b++) quantize_block_vnni(bits, x + (size_t)i * ldx + 32 * b, out + (size_t)i * nb + b);
}

static inline int32_t load_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

// Sixteen rows' unsigned weights (u) times one plane of 32 activation bytes, in two chains.
VNNI INLINE __m512i dot_plane(const __m512i u[8], const int8_t *q) {
    __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[0], _mm512_set1_epi32(load_i32(q)));
    __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[1], _mm512_set1_epi32(load_i32(q + 4)));
    for (int j = 2; j < 8; j += 2) {
        s0 = _mm512_dpbusd_epi32(s0, u[j], _mm512_set1_epi32(load_i32(q + 4 * j)));
        s1 = _mm512_dpbusd_epi32(s1, u[j + 1], _mm512_set1_epi32(load_i32(q + 4 * j + 4)));
    }
    return _mm512_add_epi32(s0, s1);
}

// Sixteen rows (one interleaved group at g) against V activation vectors (x, ldx blocks apart);
// q8 and V are constants after inlining. The block's unsigned weights are unpacked once into
// eight vectors of four bytes per row and used by every vector; two integer chains per vector.
VNNI INLINE void group_vnni(int bits, int q8, int V, const uint8_t *g, int nb, const kvt_q8_block *x, size_t ldx,
                            float *out, size_t ldo, __mmask16 lanes) {
    const int bs = q8 ? X16_Q8_BLOCK : X16_Q4_BLOCK;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc[4], accm[4];
    for (int v = 0; v < V; v++) acc[v] = accm[v] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = g + (size_t)b * bs;
        __m512 dw = _mm512_loadu_ps(blk), mw = _mm512_setzero_ps();
        __m512i u[8];
        if (q8) {
            for (int j = 0; j < 8; j++) u[j] = _mm512_loadu_si512(blk + 64 + 64 * j);
        } else {
            mw = _mm512_loadu_ps(blk + 64);
            for (int i = 0; i < 4; i++) {
                __m512i p = _mm512_loadu_si512(blk + 128 + 64 * i);
                u[2 * i] = _mm512_and_si512(p, m4);
                u[2 * i + 1] = _mm512_and_si512(_mm512_srli_epi16(p, 4), m4);
            }
        }
        for (int v = 0; v < V; v++) {
            const kvt_q8_block *xb = x + (size_t)v * ldx + b;
            __m512i isum = dot_plane(u, xb->hi);
            if (bits == 16) isum = _mm512_add_epi32(_mm512_slli_epi32(isum, 8), dot_plane(u, xb->lo));
            if (q8) isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(128 * xb->sum));
            acc[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw, _mm512_set1_ps(xb->d)), acc[v]);
            if (!q8) accm[v] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xb->s), accm[v]);
        }
    }
    for (int v = 0; v < V; v++)
        _mm512_mask_storeu_ps(out + (size_t)v * ldo, lanes, q8 ? acc[v] : _mm512_add_ps(acc[v], accm[v]));
}

// Groups [g0, g1) against m vectors: vectors in chunks of 32 (their blocks stay in L1 and L2
// while the chunk passes over the rows), four at a time against each group.
VNNI INLINE void groups_vnni(int bits, int q8, const uint8_t *w, size_t groupBytes, int r0, int r1, int nb,
                             const kvt_q8_block *x, size_t ldx, int m, float *out, size_t ldo) {
    int g0 = r0 / 16, g1 = (r1 + 15) / 16;
    for (int c0 = 0; c0 < m; c0 += 32) {
        int c1 = c0 + 32 < m ? c0 + 32 : m;
        for (int g = g0; g < g1; g++) {
            const uint8_t *grp = w + (size_t)g * groupBytes;
            int valid = r1 - 16 * g < 16 ? r1 - 16 * g : 16;  // the last group may hold padding rows
            __mmask16 lanes = (__mmask16)((1u << valid) - 1);
            float *o = out + (size_t)(g - g0) * 16;
            int i = c0;
            for (; i + 4 <= c1; i += 4)
                group_vnni(bits, q8, 4, grp, nb, x + (size_t)i * ldx, ldx, o + (size_t)i * ldo, ldo, lanes);
            switch (c1 - i) {
            case 3: group_vnni(bits, q8, 3, grp, nb, x + (size_t)i * ldx, ldx, o + (size_t)i * ldo, ldo, lanes); break;
            case 2: group_vnni(bits, q8, 2, grp, nb, x + (size_t)i * ldx, ldx, o + (size_t)i * ldo, ldo, lanes); break;
            case 1: group_vnni(bits, q8, 1, grp, nb, x + (size_t)i * ldx, ldx, o + (size_t)i * ldo, ldo, lanes); break;
            default: break;
            }
        }
    }
}

VNNI void kvt_matvec_q8_vnni(int bits, int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                             const kvt_q8_block *x, size_t ldx, int m, float *out, size_t ldo) {
    size_t groupBytes = 16 * rowBytes;
    int nb = n / 32;
    const uint8_t *p = (const uint8_t *)w;
    int q8w = type == KVT_TYPE_Q8_X16;
    if (bits == 16) {
        if (q8w) groups_vnni(16, 1, p, groupBytes, r0, r1, nb, x, ldx, m, out, ldo);
        else groups_vnni(16, 0, p, groupBytes, r0, r1, nb, x, ldx, m, out, ldo);
    } else {
        if (q8w) groups_vnni(8, 1, p, groupBytes, r0, r1, nb, x, ldx, m, out, ldo);
        else groups_vnni(8, 0, p, groupBytes, r0, r1, nb, x, ldx, m, out, ldo);
    }
}
#endif
