// KVTier compute kernels: dot products of quantized weights with F32 activations,
// dequantization, half-precision conversion and attention helpers. Each entry point picks an AVX-512, AVX2 or portable
// implementation at run time from what the CPU and the kernel's saved state allow.
#ifndef KVTIER_KERNELS_H
#define KVTIER_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "kvtier_pool.h"

#ifdef __cplusplus
extern "C" {
#endif

/// ggml tensor type ids understood by the kernels.
enum {
    KVT_TYPE_F32 = 0,
    KVT_TYPE_F16 = 1,
    KVT_TYPE_Q4_0 = 2,
    KVT_TYPE_Q4_1 = 3,
    KVT_TYPE_Q8_0 = 8,
    KVT_TYPE_BF16 = 30,
    // Repacked layouts, made once at load by kvt_repack_blocks (never in a GGUF file): the same
    // blocks with the f16 scales stored as f32 (d, then m for Q4_1, then the quants), so the
    // AVX-512 kernels broadcast them straight from memory instead of converting them per block.
    KVT_TYPE_Q4_0_R = 102,  // f32 d, 16 bytes of nibbles: 20 bytes per 32 weights
    KVT_TYPE_Q4_1_R = 103,  // f32 d, f32 m, 16 bytes of nibbles: 24 bytes
    KVT_TYPE_Q8_0_R = 108,  // f32 d, 32 signed bytes: 36 bytes
};

/// Instruction-set levels, lowest first.
enum {
    KVT_CPU_PORTABLE = 0,
    KVT_CPU_AVX2 = 1,    // AVX2 + FMA + F16C
    KVT_CPU_AVX512 = 2,  // AVX512 F/BW/VL
};

/// The level the kernels use (detected once; lowered by kvt_set_cpu_level).
int kvt_cpu_level(void);
/// The best level this CPU and OS support.
int kvt_cpu_level_detected(void);
/// Caps the level (tests use it to compare paths); returns the level now in force.
int kvt_set_cpu_level(int level);
const char *kvt_cpu_level_name(int level);
// 1 when the CPU has AVX-512 DQ (OpenBLAS's SkylakeX kernels use it), else 0.
int kvt_cpu_has_avx512dq(void);

/// The layout the kernels run fastest on for weights of `type` at the level now in force: the
/// repacked type for Q4_0, Q4_1 and Q8_0 at the AVX-512 level, otherwise `type` itself. Every
/// entry point accepts both at every level.
int kvt_preferred_type(int type);

/// Bytes per block of 32 weights of a quantized type (raw or repacked); 0 for other types.
size_t kvt_block_bytes(int type);

/// Rewrites `blocks` consecutive blocks of Q4_0, Q4_1 or Q8_0 at src into the repacked type
/// (kvt_preferred_type at AVX-512) at dst. The weights keep their exact values (f16 -> f32 is
/// exact). Returns the repacked type, or -1 (nothing written) for other types.
int kvt_repack_blocks(int type, const void *src, void *dst, size_t blocks);

/// xsum[b] = sum of x[32b ..< 32b + 32] for the n/32 blocks of x (n % 32 == 0): what the
/// quantized dot products need once per activation vector.
void kvt_block_sums(const float *x, float *xsum, int n);

/// Dot product of one weight row (n/32 blocks of Q4_0, Q4_1 or Q8_0) with F32 activations x.
/// Each weight counts as its dequantized value (as kvt_dequantize_row gives it) times x[j],
/// summed in F32. The AVX-512 path multiplies the dequantized weights themselves; the AVX2 and
/// portable paths form per block d * sum(q_j x_j), plus m * xsum[b] for Q4_1 (the same value up
/// to rounding). xsum is kvt_block_sums(x) (only those paths' Q4_1 reads it). Other types give 0.
float kvt_dot_qf(int type, const void *w, const float *x, const float *xsum, int n);

/// out[r - r0] = dot(row r of W, x) for r in [r0, r1). W has rows of rowBytes bytes, n elements
/// each. Quantized types (Q4_0/Q4_1/Q8_0) compute as kvt_dot_qf and need xsum =
/// kvt_block_sums(x); float types (F32/F16/BF16) ignore xsum (it may be NULL).
void kvt_matvec(int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                const float *x, const float *xsum, float *out);

/// out[i * ldo + (r - r0)] = dot(row r of W, x + i * ldx) for the m activation vectors i in
/// [0, m) and r in [r0, r1): each bit-identical to kvt_matvec of that vector alone (the same
/// kernel's operations in the same order), but each block of W is decoded once for up to four
/// vectors and a tile of rows is reused from cache by all of them (batched decoding). xsum + i *
/// ldxsum is vector i's kvt_block_sums (quantized types only).
void kvt_matvec_rows(int type, const void *w, size_t rowBytes, int r0, int r1, int n, const float *x, size_t ldx,
                     const float *xsum, size_t ldxsum, int m, float *out, size_t ldo);

/// Dequantizes one row of n elements of `type` into dst.
void kvt_dequantize_row(int type, const void *src, float *dst, int n);

/// IEEE half <-> single, round to nearest even.
void kvt_f32_to_f16(const float *src, uint16_t *dst, size_t n);
void kvt_f16_to_f32(const uint16_t *src, float *dst, size_t n);

/// y[i] = x[i] * w[i] / rms(x) for n elements, rms = sqrt(mean(x^2) + eps).
void kvt_rmsnorm(const float *x, const float *w, float *y, int n, float eps);

/// Rotates `nheads` heads of `headDim` (adjacent pairs, as ggml's NORM rope) in place, one row.
/// cosv/sinv hold headDim/2 values for the row's position.
void kvt_rope_row(float *x, int nheads, int headDim, const float *cosv, const float *sinv);

/// Converts n cached elements (F16 when elemBytes == 2, F32 when 4) to F32.
void kvt_kv_to_f32(const void *src, int elemBytes, float *dst, size_t n);

/// Converts T cached pre-RoPE keys of one KV head (elements of elemBytes: 2 = F16, 4 = F32) to
/// F32 and rotates each by its position: dst[t*headDim + ...] = rope(k[t], pos[t]). Key rows are
/// `ldk` elements apart. The rope tables hold headDim/2 cos and sin values per position.
void kvt_rope_keys(const void *k, int elemBytes, size_t ldk, const int32_t *pos, int T, int headDim,
                   const float *cosTable, const float *sinTable, float *dst);

/// A run of consecutive cache slots that lie together in memory (one page of a paged cache, or
/// a whole contiguous cache): `k` and `v` point at the run's first slot, rows `ld` elements apart.
typedef struct {
    const void *k;
    const void *v;
    int64_t count;
} kvt_kv_run;

/// One query against the first T cached keys/values of one KV head (decode step), read in place
/// from `runs` (consecutive slots, in slot order, together at least T). `offset` elements are
/// added to every run's pointers (the KV head's columns). q: headDim floats, already rotated.
/// Keys pre-RoPE and values, elements of elemBytes (2 = F16, 4 = F32), rows ld elements apart.
/// scores: scratch of T floats. out: headDim floats. The result does not depend on how the
/// slots are cut into runs (same operations in the same order).
void kvt_attend_runs(const float *q, const kvt_kv_run *runs, size_t offset, int elemBytes, size_t ld,
                     const int32_t *pos, int T, int headDim, float scale,
                     const float *cosTable, const float *sinTable, float *scores, float *out);

/// kvt_attend_runs for the nq query heads that share one KV head (grouped-query attention): query
/// j at q + j * ldq, its scores at scores + j * T (scratch of nq * T floats), its output at
/// out + j * ldo. Each head's result is bit for bit what kvt_attend_runs gives it alone, at the
/// same level; each cached row is read and converted once for all nq heads. At the AVX-512
/// level (headDim a multiple of 16, at most 256; nq at most 16) each key is rotated once, in
/// 16-lane vectors, and dotted with every query; elsewhere the heads run one after the other.
void kvt_attend_runs_group(const float *q, size_t ldq, int nq, const kvt_kv_run *runs, size_t offset, int elemBytes,
                           size_t ld, const int32_t *pos, int T, int headDim, float scale, const float *cosTable,
                           const float *sinTable, float *scores, float *out, size_t ldo);

/// Row-wise softmax of an n x T score matrix with causal masking: row j may see columns
/// [0, firstVisible + j], the rest are set to 0. Scores are multiplied by `scale` first.
void kvt_softmax_causal(float *s, int n, int T, int firstVisible, float scale);

/// y = silu(g) * u, elementwise.
void kvt_swiglu(const float *g, const float *u, float *y, size_t n);

/// Runs `iterations` rounds of 12 independent fused multiply-add chains at the widest level the
/// kernels use (a probe of the cores' floating-point peak); sets the FLOPs of one round and
/// returns a value that depends on every chain (so the work cannot be skipped).
float kvt_probe_fma(long iterations, int *flopsPerIteration);

/// Reads `bytes` bytes at data with independent vector adds (a probe of the memory read
/// bandwidth one thread gets); returns their sum so the reads cannot be skipped.
uint64_t kvt_probe_read(const void *data, size_t bytes);

/// CRC-32C (Castagnoli) of n bytes; SSE4.2 when available.
uint32_t kvt_crc32c(const void *data, size_t n);

#ifdef __cplusplus
}
#endif
#endif
