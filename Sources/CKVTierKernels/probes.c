// Probes of the machine's peaks, for the roofline of `kvtier-bench kernels`: independent
// fused multiply-add chains at the widest level the kernels use (how fast the cores multiply),
// and a streaming read with eight independent integer sums (how fast memory feeds a core).
#include "kernels_internal.h"

#include <string.h>

#if defined(KVT_X86)
#include <immintrin.h>

__attribute__((target("avx512f"))) static float fma_chains_avx512(long iterations) {
    __m512 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i * 1e-3f);
    const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-4f);
    for (long k = 0; k < iterations; k++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
    __m512 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2"))) static uint64_t read_avx2(const uint8_t *p, size_t bytes) {
    __m256i a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_si256();
    size_t n = bytes / 256 * 256;
    for (size_t off = 0; off < n; off += 256)
        for (int i = 0; i < 8; i++) a[i] = _mm256_add_epi32(a[i], _mm256_loadu_si256((const __m256i *)(p + off + 32 * i)));
    for (int i = 1; i < 8; i++) a[0] = _mm256_add_epi32(a[0], a[i]);
    uint32_t out[8];
    _mm256_storeu_si256((__m256i *)out, a[0]);
    uint64_t s = 0;
    for (int i = 0; i < 8; i++) s += out[i];
    return s;
}

__attribute__((target("avx2,fma"))) static float fma_chains_avx2(long iterations) {
    __m256 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i * 1e-3f);
    const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-4f);
    for (long k = 0; k < iterations; k++)
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
    float out[8];
    __m256 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
    _mm256_storeu_ps(out, s);
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}
#endif

float kvt_probe_fma(long iterations, int *flopsPerIteration) {
#if defined(KVT_X86)
    int level = kvt_cpu_level();
    if (level >= KVT_CPU_AVX512) {
        *flopsPerIteration = 12 * 16 * 2;
        return fma_chains_avx512(iterations);
    }
    if (level >= KVT_CPU_AVX2) {
        *flopsPerIteration = 12 * 8 * 2;
        return fma_chains_avx2(iterations);
    }
#endif
    float a[12];
    for (int i = 0; i < 12; i++) a[i] = (float)i * 1e-3f;
    for (long k = 0; k < iterations; k++)
        for (int i = 0; i < 12; i++) a[i] = a[i] * 0.999f + 1e-4f;
    *flopsPerIteration = 12 * 2;
    float s = 0;
    for (int i = 0; i < 12; i++) s += a[i];
    return s;
}

uint64_t kvt_probe_read(const void *data, size_t bytes) {
    const uint8_t *p = (const uint8_t *)data;
#if defined(KVT_X86)
    if (kvt_cpu_level() >= KVT_CPU_AVX2) return read_avx2(p, bytes);
#endif
    uint64_t s = 0;
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        s += v;
    }
    return s;
}
