// Run-time dispatch and the kernels that are plain loops (compiled once per
// instruction-set level through an always-inline body).
#include "kernels_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

// ---------------------------------------------------------------------------------------
// CPU detection. The level is computed once; a race between two first callers is benign
// (both compute the same value).

static int detect_level(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return KVT_CPU_PORTABLE;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!(fma && osxsave && avx && f16c)) return KVT_CPU_PORTABLE;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0x6) != 0x6) return KVT_CPU_PORTABLE;  // OS does not save YMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return KVT_CPU_PORTABLE;
    int avx2 = (b >> 5) & 1;
    if (!avx2) return KVT_CPU_PORTABLE;
    int f = (b >> 16) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    if (f && bw && vl && (lo & 0xe6) == 0xe6) return KVT_CPU_AVX512;  // + opmask and ZMM state
    return KVT_CPU_AVX2;
#else
    return KVT_CPU_PORTABLE;
#endif
}

// *slot, computed by detect() the first time (a race between two first callers is benign:
// both store the same value).
static int detected_once(int *slot, int (*detect)(void)) {
    int v = __atomic_load_n(slot, __ATOMIC_RELAXED);
    if (v < 0) {
        v = detect();
        __atomic_store_n(slot, v, __ATOMIC_RELAXED);
    }
    return v;
}

static int g_detected = -1;
static int g_level = -1;

int kvt_cpu_level_detected(void) { return detected_once(&g_detected, detect_level); }

int kvt_cpu_level(void) {
    int v = __atomic_load_n(&g_level, __ATOMIC_RELAXED);
    if (v < 0) {
        v = kvt_cpu_level_detected();
        const char *env = getenv("KVTIER_SIMD");  // operator override: portable | avx2 | avx512
        if (env) {
            int want = strcmp(env, "portable") == 0 ? KVT_CPU_PORTABLE
                     : strcmp(env, "avx2") == 0     ? KVT_CPU_AVX2
                                                    : KVT_CPU_AVX512;
            if (want < v) v = want;
        }
        __atomic_store_n(&g_level, v, __ATOMIC_RELAXED);
    }
    return v;
}

int kvt_set_cpu_level(int level) {
    int best = kvt_cpu_level_detected();
    int v = level < best ? level : best;
    if (v < 0) v = 0;
    __atomic_store_n(&g_level, v, __ATOMIC_RELAXED);
    return v;
}

int kvt_cpu_has_avx512dq(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (int)((b >> 17) & 1);
#else
    return 0;
#endif
}

static int detect_avx512vnni(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (int)((c >> 11) & 1);
#else
    return 0;
#endif
}

// Read once: CPUID traps to the hypervisor on a VM (measured here: 25% of a decode step when
// each matrix product asked).
static int g_vnni = -1;

int kvt_cpu_has_avx512vnni(void) { return detected_once(&g_vnni, detect_avx512vnni); }

// The quantized-activation kernels run (AVX-512 level and VNNI).
static int q8_vnni(void) { return kvt_cpu_level() >= KVT_CPU_AVX512 && kvt_cpu_has_avx512vnni(); }

const char *kvt_cpu_level_name(int level) {
    switch (level) {
    case KVT_CPU_AVX512: return "avx512";
    case KVT_CPU_AVX2: return "avx2-fma-f16c";
    default: return "portable";
    }
}

#if defined(KVT_X86)
#define LEVEL() kvt_cpu_level()
#else
#define LEVEL() KVT_CPU_PORTABLE
#endif

// ---------------------------------------------------------------------------------------
// Dispatched entry points.

static inline int is_repacked(int type) {
    return type == KVT_TYPE_Q4_0_R || type == KVT_TYPE_Q4_1_R || type == KVT_TYPE_Q8_0_R;
}

static inline int is_quantized(int type) {
    return type == KVT_TYPE_Q4_0 || type == KVT_TYPE_Q4_1 || type == KVT_TYPE_Q8_0 || is_repacked(type);
}

float kvt_dot_qf(int type, const void *w, const float *x, const float *xsum, int n) {
#if defined(KVT_X86)
    int l = LEVEL();
    if (l >= KVT_CPU_AVX512) return kvt_dot_qf_avx512(type, w, x, xsum, n);
    if (l >= KVT_CPU_AVX2 && !is_repacked(type)) return kvt_dot_qf_avx2(type, w, x, xsum, n);
#endif
    return kvt_dot_qf_portable(type, w, x, xsum, n);
}

size_t kvt_block_bytes(int type) {
    switch (type) {
    case KVT_TYPE_Q4_0: return 18;
    case KVT_TYPE_Q4_1: return 20;
    case KVT_TYPE_Q8_0: return 34;
    case KVT_TYPE_Q4_0_R: return 20;
    case KVT_TYPE_Q4_1_R: return 24;
    case KVT_TYPE_Q8_0_R: return 36;
    default: return 0;
    }
}

int kvt_preferred_type(int type) {
    if (LEVEL() < KVT_CPU_AVX512) return type;
    switch (type) {
    case KVT_TYPE_Q4_0: return KVT_TYPE_Q4_0_R;
    case KVT_TYPE_Q4_1: return KVT_TYPE_Q4_1_R;
    case KVT_TYPE_Q8_0: return KVT_TYPE_Q8_0_R;
    default: return type;
    }
}

int kvt_repack_blocks(int type, const void *src, void *dst, size_t blocks) {
    const uint8_t *p = (const uint8_t *)src;
    uint8_t *o = (uint8_t *)dst;
    // The f16 scales at the front of a raw block, and the quants after them.
    int scales, quants, out;
    switch (type) {
    case KVT_TYPE_Q4_0: scales = 1, quants = 16, out = KVT_TYPE_Q4_0_R; break;
    case KVT_TYPE_Q4_1: scales = 2, quants = 16, out = KVT_TYPE_Q4_1_R; break;
    case KVT_TYPE_Q8_0: scales = 1, quants = 32, out = KVT_TYPE_Q8_0_R; break;
    default: return -1;
    }
    for (size_t b = 0; b < blocks; b++) {
        for (int k = 0; k < scales; k++) {
            uint16_t h;
            memcpy(&h, p + 2 * k, 2);
            float f = kvt_half_to_float(h);
            memcpy(o + 4 * k, &f, 4);
        }
        memcpy(o + 4 * scales, p + 2 * scales, (size_t)quants);
        p += 2 * scales + quants;
        o += 4 * scales + quants;
    }
    return out;
}

void kvt_matvec(int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                const float *x, const float *xsum, float *out) {
    const uint8_t *base = (const uint8_t *)w;
    int l = LEVEL();
    (void)l;
    if (is_quantized(type)) {
#if defined(KVT_X86)
        if (l >= KVT_CPU_AVX512) { kvt_matvec_qf_avx512(type, w, rowBytes, r0, r1, n, x, xsum, out); return; }
        // The repacked layouts are made for the AVX-512 kernels; below that level they take the portable path.
        if (l >= KVT_CPU_AVX2 && !is_repacked(type)) {
            kvt_matvec_qf_avx2(type, w, rowBytes, r0, r1, n, x, xsum, out);
            return;
        }
#endif
        for (int r = r0; r < r1; r++) out[r - r0] = kvt_dot_qf_portable(type, base + (size_t)r * rowBytes, x, xsum, n);
        return;
    }
    for (int r = r0; r < r1; r++) {
        const void *row = base + (size_t)r * rowBytes;
#if defined(KVT_X86)
        if (l >= KVT_CPU_AVX2) { out[r - r0] = kvt_dot_f_avx2(type, row, x, n); continue; }
#endif
        out[r - r0] = kvt_dot_f_portable(type, row, x, n);
    }
}

void kvt_matvec_rows(int type, const void *w, size_t rowBytes, int r0, int r1, int n, const float *x, size_t ldx,
                     const float *xsum, size_t ldxsum, int m, float *out, size_t ldo) {
#if defined(KVT_X86)
    if (is_quantized(type) && LEVEL() >= KVT_CPU_AVX512) {
        kvt_matvec_rows_qf_avx512(type, w, rowBytes, r0, r1, n, x, ldx, xsum, ldxsum, m, out, ldo);
        return;
    }
#endif
    // Other paths: the lone-vector kernel for each vector, over tiles of 16 rows.
    for (int t0 = r0; t0 < r1; t0 += 16) {
        int t1 = t0 + 16 < r1 ? t0 + 16 : r1;
        for (int i = 0; i < m; i++)
            kvt_matvec(type, w, rowBytes, t0, t1, n, x + i * ldx, xsum ? xsum + i * ldxsum : NULL,
                       out + i * ldo + (t0 - r0));
    }
}

int kvt_q8_layout(int type) {
    if (!q8_vnni()) return -1;
    switch (type) {
    case KVT_TYPE_Q4_0:
    case KVT_TYPE_Q4_1: return KVT_TYPE_Q4_X16;
    case KVT_TYPE_Q8_0: return KVT_TYPE_Q8_X16;
    default: return -1;
    }
}

void kvt_quantize_q8(int bits, const float *x, size_t ldx, int m, int n, kvt_q8_block *out) {
#if defined(KVT_X86)
    if (q8_vnni()) { kvt_quantize_q8_vnni(bits, x, ldx, m, n, out); return; }
#endif
    kvt_quantize_q8_portable(bits, x, ldx, m, n, out);
}

void kvt_matvec_q8(int bits, int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                   const kvt_q8_block *x, size_t ldx, int m, float *out, size_t ldo) {
#if defined(KVT_X86)
    if (q8_vnni() && r0 % 16 == 0) {
        kvt_matvec_q8_vnni(bits, type, w, rowBytes, r0, r1, n, x, ldx, m, out, ldo);
        return;
    }
#endif
    kvt_matvec_q8_portable(bits, type, w, rowBytes, r0, r1, n, x, ldx, m, out, ldo);
}

void kvt_dequantize_row(int type, const void *src, float *dst, int n) {
#if defined(KVT_X86)
    if (LEVEL() >= KVT_CPU_AVX512 && kvt_block_bytes(type) > 0) {
        kvt_dequantize_row_avx512(type, src, dst, n);
        return;
    }
    if (LEVEL() >= KVT_CPU_AVX2) { kvt_dequantize_row_avx2(type, src, dst, n); return; }
#endif
    kvt_dequantize_row_portable(type, src, dst, n);
}

void kvt_f16_to_f32(const uint16_t *src, float *dst, size_t n) {
#if defined(KVT_X86)
    if (LEVEL() >= KVT_CPU_AVX2) { kvt_f16_to_f32_avx2(src, dst, n); return; }
#endif
    kvt_f16_to_f32_portable(src, dst, n);
}

void kvt_kv_to_f32(const void *src, int elemBytes, float *dst, size_t n) {
    if (elemBytes == 4) {
        memcpy(dst, src, n * sizeof(float));
    } else {
        kvt_f16_to_f32((const uint16_t *)src, dst, n);
    }
}

void kvt_f32_to_f16(const float *src, uint16_t *dst, size_t n) {
#if defined(KVT_X86)
    if (LEVEL() >= KVT_CPU_AVX2) { kvt_f32_to_f16_avx2(src, dst, n); return; }
#endif
    kvt_f32_to_f16_portable(src, dst, n);
}

// ---------------------------------------------------------------------------------------
// Plain loops: one always-inline body, instantiated for AVX2 and for the baseline.

#define BODY static inline __attribute__((always_inline))
#if defined(KVT_X86)
#define AVX2_ATTR __attribute__((target("avx2,fma,f16c")))
#define INSTANTIATE(name, params, args)                          \
    AVX2_ATTR static void name##_avx2 params { name##_body args; } \
    static void name##_base params { name##_body args; }            \
    void kvt_##name params {                                        \
        if (LEVEL() >= KVT_CPU_AVX2) name##_avx2 args;              \
        else name##_base args;                                      \
    }
#else
#define INSTANTIATE(name, params, args) \
    void kvt_##name params { name##_body args; }
#endif

BODY void block_sums_body(const float *x, float *xsum, int n) {
    for (int b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        for (int j = 0; j < 32; j += 4) {
            s0 += xb[j];
            s1 += xb[j + 1];
            s2 += xb[j + 2];
            s3 += xb[j + 3];
        }
        xsum[b] = (s0 + s1) + (s2 + s3);
    }
}
INSTANTIATE(block_sums, (const float *x, float *xsum, int n), (x, xsum, n))

BODY void rmsnorm_body(const float *x, const float *w, float *y, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * scale * w[i];
}
INSTANTIATE(rmsnorm, (const float *x, const float *w, float *y, int n, float eps), (x, w, y, n, eps))

BODY void rope_row_body(float *x, int nheads, int headDim, const float *cosv, const float *sinv) {
    int half = headDim / 2;
    for (int h = 0; h < nheads; h++) {
        float *v = x + h * headDim;
        for (int i = 0; i < half; i++) {
            float c = cosv[i], s = sinv[i];
            float a = v[2 * i], b = v[2 * i + 1];
            v[2 * i] = a * c - b * s;
            v[2 * i + 1] = a * s + b * c;
        }
    }
}
INSTANTIATE(rope_row, (float *x, int nheads, int headDim, const float *cosv, const float *sinv),
            (x, nheads, headDim, cosv, sinv))

BODY void rope_keys_body(const void *k, int elemBytes, size_t ldk, const int32_t *pos, int T, int headDim,
                         const float *cosTable, const float *sinTable, float *dst) {
    int half = headDim / 2;
    for (int t = 0; t < T; t++) {
        float *row = dst + (size_t)t * headDim;
        kvt_kv_to_f32((const uint8_t *)k + (size_t)t * ldk * elemBytes, elemBytes, row, (size_t)headDim);
        const float *c = cosTable + (size_t)pos[t] * half, *s = sinTable + (size_t)pos[t] * half;
        for (int i = 0; i < half; i++) {
            float a = row[2 * i], b = row[2 * i + 1];
            row[2 * i] = a * c[i] - b * s[i];
            row[2 * i + 1] = a * s[i] + b * c[i];
        }
    }
}
INSTANTIATE(rope_keys,
            (const void *k, int elemBytes, size_t ldk, const int32_t *pos, int T, int headDim, const float *cosTable,
             const float *sinTable, float *dst),
            (k, elemBytes, ldk, pos, T, headDim, cosTable, sinTable, dst))

BODY void softmax_causal_body(float *s, int n, int T, int firstVisible, float scale) {
    for (int j = 0; j < n; j++) {
        float *row = s + (size_t)j * T;
        int visible = firstVisible + j + 1;
        if (visible > T) visible = T;
        if (visible < 1) visible = 1;
        float mx = -INFINITY;
        for (int t = 0; t < visible; t++) {
            row[t] *= scale;
            mx = row[t] > mx ? row[t] : mx;
        }
        float sum = 0.0f;
        for (int t = 0; t < visible; t++) {
            row[t] = expf(row[t] - mx);
            sum += row[t];
        }
        float inv = 1.0f / sum;
        for (int t = 0; t < visible; t++) row[t] *= inv;
        for (int t = visible; t < T; t++) row[t] = 0.0f;
    }
}
INSTANTIATE(softmax_causal, (float *s, int n, int T, int firstVisible, float scale), (s, n, T, firstVisible, scale))

BODY void attend_runs_one_body(const float *q, const kvt_kv_run *runs, size_t offset, int elemBytes, size_t ld,
                           const int32_t *pos, int T, int headDim, float scale, const float *cosTable,
                           const float *sinTable, float *scores, float *out) {
    int half = headDim / 2;
    size_t rowBytes = ld * (size_t)elemBytes;
    float row[256];
    float mx = -INFINITY;
    for (int t = 0, r = 0; t < T; r++) {
        const uint8_t *k = (const uint8_t *)runs[r].k + offset * (size_t)elemBytes;
        int end = t + (int)runs[r].count < T ? t + (int)runs[r].count : T;
        for (; t < end; t++, k += rowBytes) {
            kvt_kv_to_f32(k, elemBytes, row, (size_t)headDim);
            const float *c = cosTable + (size_t)pos[t] * half, *s = sinTable + (size_t)pos[t] * half;
            // q . rope(k): per pair, c*(q0 k0 + q1 k1) + s*(q1 k0 - q0 k1)
            float acc = 0.0f;
            for (int i = 0; i < half; i++) {
                float q0 = q[2 * i], q1 = q[2 * i + 1], k0 = row[2 * i], k1 = row[2 * i + 1];
                acc += c[i] * (q0 * k0 + q1 * k1) + s[i] * (q1 * k0 - q0 * k1);
            }
            acc *= scale;
            scores[t] = acc;
            mx = acc > mx ? acc : mx;
        }
    }
    float sum = 0.0f;
    for (int t = 0; t < T; t++) {
        scores[t] = expf(scores[t] - mx);
        sum += scores[t];
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < headDim; i++) out[i] = 0.0f;
    for (int t = 0, r = 0; t < T; r++) {
        const uint8_t *v = (const uint8_t *)runs[r].v + offset * (size_t)elemBytes;
        int end = t + (int)runs[r].count < T ? t + (int)runs[r].count : T;
        for (; t < end; t++, v += rowBytes) {
            kvt_kv_to_f32(v, elemBytes, row, (size_t)headDim);
            float p = scores[t] * inv;
            for (int i = 0; i < headDim; i++) out[i] += p * row[i];
        }
    }
}
INSTANTIATE(attend_runs_one,
            (const float *q, const kvt_kv_run *runs, size_t offset, int elemBytes, size_t ld, const int32_t *pos,
             int T, int headDim, float scale, const float *cosTable, const float *sinTable, float *scores, float *out),
            (q, runs, offset, elemBytes, ld, pos, T, headDim, scale, cosTable, sinTable, scores, out))

void kvt_attend_runs_group(const float *q, size_t ldq, int nq, const kvt_kv_run *runs, size_t offset, int elemBytes,
                           size_t ld, const int32_t *pos, int T, int headDim, float scale, const float *cosTable,
                           const float *sinTable, float *scores, float *out, size_t ldo) {
#if defined(KVT_X86)
    if (LEVEL() >= KVT_CPU_AVX512 && headDim % 16 == 0 && headDim <= 256 && nq <= 16) {
        kvt_attend_group_avx512(q, ldq, nq, runs, offset, elemBytes, ld, pos, T, headDim, scale, cosTable, sinTable,
                                scores, out, ldo);
        return;
    }
#endif
    for (int j = 0; j < nq; j++)
        kvt_attend_runs_one(q + (size_t)j * ldq, runs, offset, elemBytes, ld, pos, T, headDim, scale, cosTable,
                            sinTable, scores + (size_t)j * T, out + (size_t)j * ldo);
}

void kvt_attend_rows_group(const float *q, size_t ldqRow, size_t ldq, int nq, int m, const kvt_kv_run *runs,
                           size_t offset, int elemBytes, size_t ld, const int32_t *pos, int T0, int headDim,
                           float scale, const float *cosTable, const float *sinTable, float *keys, float *values,
                           float *scores, float *out, size_t ldoRow, size_t ldo) {
#if defined(KVT_X86)
    if (LEVEL() >= KVT_CPU_AVX512 && headDim % 16 == 0 && headDim <= 256 && nq <= 16) {
        kvt_attend_rows_avx512(q, ldqRow, ldq, nq, m, runs, offset, elemBytes, ld, pos, T0, headDim, scale, cosTable,
                               sinTable, keys, values, scores, out, ldoRow, ldo);
        return;
    }
#endif
    (void)keys, (void)values;
    for (int i = 0; i < m; i++)
        kvt_attend_runs_group(q + (size_t)i * ldqRow, ldq, nq, runs, offset, elemBytes, ld, pos, T0 + i, headDim, scale,
                              cosTable, sinTable, scores, out + (size_t)i * ldoRow, ldo);
}

void kvt_attend_runs(const float *q, const kvt_kv_run *runs, size_t offset, int elemBytes, size_t ld,
                     const int32_t *pos, int T, int headDim, float scale, const float *cosTable, const float *sinTable,
                     float *scores, float *out) {
    kvt_attend_runs_group(q, 0, 1, runs, offset, elemBytes, ld, pos, T, headDim, scale, cosTable, sinTable, scores,
                          out, 0);
}

BODY void swiglu_body(const float *g, const float *u, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}
#if defined(KVT_X86)
AVX2_ATTR static void swiglu_avx2(const float *g, const float *u, float *y, size_t n) { swiglu_body(g, u, y, n); }
#endif

// AVX-512: a vectorised e^x (expf is a call per element, and SwiGLU was 15% of a prompt's time).
void kvt_swiglu(const float *g, const float *u, float *y, size_t n) {
#if defined(KVT_X86)
    if (LEVEL() >= KVT_CPU_AVX512) { kvt_swiglu_avx512(g, u, y, n); return; }
    if (LEVEL() >= KVT_CPU_AVX2) { swiglu_avx2(g, u, y, n); return; }
#endif
    swiglu_body(g, u, y, n);
}
