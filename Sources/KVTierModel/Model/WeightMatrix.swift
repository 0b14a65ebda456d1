import CKVTierKernels

/// A weight matrix of the model: `rows` rows of `cols` elements of `type`. Row r holds the
/// weights of output r (GGUF dims are [cols, rows]). The kernels read it where it lies in the
/// mapped GGUF, or, for quantized types where the kernels prefer another layout at this CPU's
/// level, from a copy repacked once at load (then the mapped pages are dropped).
public struct WeightMatrix: @unchecked Sendable {
    // @unchecked: `base` points into the immutable model mapping, which the owning
    // LlamaWeights keeps alive, or into `repacked`, which this value keeps alive and nothing
    // writes after its init.
    public let name: String
    /// The tensor's type in the GGUF.
    public let type: GGMLType
    public let rows: Int
    public let cols: Int
    /// Bytes per row in the layout the kernels read (`kernelType`).
    public let rowBytes: Int
    /// The kernels' type id for the bytes at `base`: `type`, or its repacked layout.
    let kernelType: Int32
    let base: UnsafeRawPointer
    private let repacked: RepackedBlocks?

    init(file: GGUFFile, name: String, rows: Int, cols: Int) throws(GGUFError) {
        guard let t = file.tensor(name) else { throw GGUFError.missingTensor(name) }
        guard t.dims.count <= 2, t.rowLength == cols, t.rowCount == rows else {
            throw GGUFError.badTensorShape(tensor: name, expected: [cols, rows], found: t.dims)
        }
        guard let base = file.data(of: t).baseAddress else { throw GGUFError.missingTensor(name) }
        self.name = name
        self.type = t.type
        self.rows = rows
        self.cols = cols
        if let packed = RepackedBlocks(
            interleaving: t.type, source: base, sourceRowBytes: t.rowBytes, rows: rows, cols: cols)
        {
            self.repacked = packed
            self.base = packed.pointer
            self.rowBytes = cols / 32 * packed.blockBytes
            self.kernelType = packed.kernelType
            file.dropResidentPages(of: t)
        } else if cols % 32 == 0, let packed = RepackedBlocks(type: t.type, source: base, blocks: rows * cols / 32) {
            self.repacked = packed
            self.base = packed.pointer
            self.rowBytes = cols / 32 * packed.blockBytes
            self.kernelType = packed.kernelType
            file.dropResidentPages(of: t)
        } else {
            self.repacked = nil
            self.base = base
            self.rowBytes = t.rowBytes
            self.kernelType = Int32(t.type.rawValue)
        }
    }

    var isQuantized: Bool { type == .q4_0 || type == .q4_1 || type == .q8_0 }

    /// Whether the quantized-activation path computes with this matrix (activations quantized
    /// per block of 32, integer dot products, `kvt_matvec_q8`): its rows are interleaved by 16.
    var takesQuantizedActivations: Bool { kernelType == KVT_TYPE_Q4_X16 || kernelType == KVT_TYPE_Q8_X16 }

    /// Dequantizes rows [r0, r1) into `dst` (row-major, `cols` floats per row).
    func dequantize(rows r0: Int, _ r1: Int, into dst: UnsafeMutablePointer<Float>) {
        for r in r0..<r1 {
            if takesQuantizedActivations {
                kvt_dequantize_x16_row(kernelType, base, rowBytes, Int32(r), Int32(cols), dst + (r - r0) * cols)
            } else {
                kvt_dequantize_row(kernelType, base + r * rowBytes, dst + (r - r0) * cols, Int32(cols))
            }
        }
    }
}

/// A 1-D F32 weight (norms). Copied out of the mapping.
struct NormWeight: Sendable {
    let values: [Float]

    init(file: GGUFFile, name: String, count: Int) throws(GGUFError) {
        guard let t = file.tensor(name) else { throw GGUFError.missingTensor(name) }
        guard t.elementCount == count else {
            throw GGUFError.badTensorShape(tensor: name, expected: [count], found: t.dims)
        }
        var v = [Float](repeating: 0, count: count)
        let data = file.data(of: t)
        v.withUnsafeMutableBufferPointer { out in
            if let src = data.baseAddress, let dst = out.baseAddress {
                kvt_dequantize_row(Int32(t.type.rawValue), src, dst, Int32(count))
            }
        }
        guard t.type == .f32 || t.type == .f16 || t.type == .bf16 else {
            throw GGUFError.unsupportedTensorType(tensor: name, type: t.type.rawValue)
        }
        self.values = v
    }
}
