import CKVTierKernels

// Unsafe-pointer fence: the memory of weights rewritten at load for the kernels.

/// Quantized weights rewritten once at load into the layout the kernels run fastest on at this
/// CPU's level (`kvt_preferred_type`: at AVX-512, the blocks with f32 instead of f16 scales,
/// 20% more bytes, measured 1.4-1.9x faster per row; docs/benchmarks.md). Owns its memory,
/// which is written only in `init`: `@unchecked Sendable` because it is immutable afterwards.
final class RepackedBlocks: @unchecked Sendable {
    let pointer: UnsafeRawPointer
    /// The kernels' type id for these blocks.
    let kernelType: Int32
    let blockBytes: Int

    /// nil when the kernels prefer `type`'s own layout (not quantized, or a lower SIMD level).
    init?(type: GGMLType, source: UnsafeRawPointer, blocks: Int) {
        let raw = Int32(type.rawValue)
        let preferred = kvt_preferred_type(raw)
        let blockBytes = kvt_block_bytes(preferred)
        guard preferred != raw, blockBytes > 0, blocks > 0 else { return nil }
        let memory = UnsafeMutableRawPointer.allocate(byteCount: blocks * blockBytes, alignment: 64)
        guard kvt_repack_blocks(raw, source, memory, blocks) == preferred else {
            memory.deallocate()
            return nil
        }
        self.pointer = UnsafeRawPointer(memory)
        self.kernelType = preferred
        self.blockBytes = blockBytes
    }

    /// The quantized-activation path's interleaved layout (`kvt_q8_layout`: AVX-512 VNNI) of `rows` rows of `cols`
    /// weights, sourceRowBytes apart at source (rows rounded up to 16 with zero rows); nil where
    /// this CPU has no such path, or for other types or shapes (cols not a multiple of 32).
    init?(interleaving type: GGMLType, source: UnsafeRawPointer, sourceRowBytes: Int, rows: Int, cols: Int) {
        let raw = Int32(type.rawValue)
        let layout = kvt_q8_layout(raw)
        guard layout >= 0, rows > 0, cols > 0, cols % 32 == 0 else { return nil }
        let rowBytes = kvt_x16_row_bytes(layout, Int32(cols))
        let memory = UnsafeMutableRawPointer.allocate(byteCount: (rows + 15) / 16 * 16 * rowBytes, alignment: 64)
        guard kvt_repack_x16(raw, source, sourceRowBytes, Int32(rows), Int32(cols), memory) == layout else {
            memory.deallocate()
            return nil
        }
        self.pointer = UnsafeRawPointer(memory)
        self.kernelType = layout
        self.blockBytes = rowBytes / (cols / 32)
    }

    deinit { UnsafeMutableRawPointer(mutating: pointer).deallocate() }
}
