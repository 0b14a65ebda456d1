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
    // The quantized-activation path's layouts (kvt_repack_x16): rows in groups of 16, a group's blocks one after
    // the other, each block holding its 16 rows interleaved by four weights:
    //   Q4_X16 (from Q4_0 or Q4_1), 384 bytes: f32 d[16], f32 m[16], four slices of 64 bytes
    //     (slice i, row r's four bytes, byte t: weight 8i + t in the low nibble, 8i + 4 + t in
    //     the high one); a weight is d * q + m (Q4_0: m = -8d).
    //   Q8_X16 (from Q8_0), 576 bytes: f32 d[16], eight slices of 64 bytes (slice j, row r's
    //     four bytes, byte t: weight 4j + t plus 128); a weight is d * (u - 128).
    KVT_TYPE_Q4_X16 = 200,
    KVT_TYPE_Q8_X16 = 201,
};

/// 32 activations quantized to integers (the quantized-activation path): x[k] ~ d * q[k], q[k]
/// rounded to nearest. With 8 bits, q = hi (d = max|x| / 127; lo unused); with 16 bits,
/// q = 256 * hi + lo, both signed bytes (d = max|x| / 32512, so hi stays within +-127): the two
/// byte planes go through the same 8-bit dot products. sum = sum of q[k], s = d * sum (Q4
/// weights' offsets use it). 80 bytes.
typedef struct {
    int8_t hi[32];
    int8_t lo[32];
    float d;
    float s;
    int32_t sum;
    int32_t pad;
} kvt_q8_block;

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
// 1 when the CPU has AVX-512 VNNI (the quantized-activation path's dot products), else 0.
int kvt_cpu_has_avx512vnni(void);

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

/// The quantized-activation path's layout for weights of `type` on this CPU (Q4_X16 for Q4_0 and Q4_1, Q8_X16 for
/// Q8_0) when the level now in force is AVX-512 and the CPU has AVX-512 VNNI; else -1.
int kvt_q8_layout(int type);
/// Bytes per row (a sixteenth of a group) of an X16 layout for rows of n elements.
size_t kvt_x16_row_bytes(int type, int n);
/// Rewrites `rows` rows of n elements (a multiple of 32) of Q4_0, Q4_1 or Q8_0, srcRowBytes
/// apart, into the X16 layout at dst (kvt_x16_row_bytes times rows rounded up to 16 bytes; the
/// last group's padding rows are zero weights). The weights keep their values exactly. Returns
/// the layout, or -1 (nothing written).
int kvt_repack_x16(int type, const void *src, size_t srcRowBytes, int rows, int n, void *dst);
/// Dequantizes row r of an X16 matrix (rows rowBytes = kvt_x16_row_bytes apart) into dst.
void kvt_dequantize_x16_row(int type, const void *w, size_t rowBytes, int r, int n, float *dst);
/// Quantizes m vectors of n activations (n % 32 == 0), ldx floats apart, to `bits` (8 or 16)
/// into out: vector i's n/32 blocks at out + i * (n / 32). The same bits at every level.
void kvt_quantize_q8(int bits, const float *x, size_t ldx, int m, int n, kvt_q8_block *out);
/// out[i * ldo + (r - r0)] = row r of the X16 matrix W times vector i quantized to `bits` (at
/// x + i * ldx blocks), for r in [r0, r1) and i in [0, m): per block the integer dot product
/// (u . hi with 8 bits; 256 * (u . hi) + (u . lo) with 16; exact in 32 bits either way), then
/// acc = fma(isum, d_w * d_x, acc) and, for Q4_X16, accm = fma(m_w, s_x, accm), in block order;
/// the result acc + accm. Each result is the same bits at every level and whatever other rows
/// and vectors are computed with it. The AVX-512 VNNI kernel takes r0 a multiple of 16.
void kvt_matvec_q8(int bits, int type, const void *w, size_t rowBytes, int r0, int r1, int n,
                   const kvt_q8_block *x, size_t ldx, int m, float *out, size_t ldo);

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

/// kvt_attend_runs_group for m consecutive query rows of a prompt: row i's nq heads at
/// q + i * ldqRow (heads ldq apart) see the first T0 + i slots, and its outputs go to
/// out + i * ldoRow (heads ldo apart). Every (row, head) is bit for bit what
/// kvt_attend_runs_group gives it alone with T = T0 + i, at the same level, so prompts, chunks
/// and decoding give the same bits. keys: scratch of (T0 + m - 1) rounded up to a multiple of
/// 16, times headDim floats; values: (T0 + m - 1) * headDim floats (the AVX-512 path rotates
/// each key and converts each value once there); scores: nq * (T0 + m - 1) floats.
void kvt_attend_rows_group(const float *q, size_t ldqRow, size_t ldq, int nq, int m, const kvt_kv_run *runs,
                           size_t offset, int elemBytes, size_t ld, const int32_t *pos, int T0, int headDim,
                           float scale, const float *cosTable, const float *sinTable, float *keys, float *values,
                           float *scores, float *out, size_t ldoRow, size_t ldo);

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
