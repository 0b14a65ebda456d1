/// One tensor of a GGUF file: its name, type, shape and where its data lies in the mapping.
public struct GGUFTensor: Sendable {
    public let name: String
    public let type: GGMLType
    /// Dimensions, fastest-varying first (ggml order): a matrix with `dims == [cols, rows]`
    /// is `rows` rows of `cols` elements each.
    public let dims: [Int]
    /// Absolute offset of the data in the file.
    public let fileOffset: Int
    public let byteCount: Int

    public var elementCount: Int { dims.reduce(1, *) }
    /// Elements per row (the first dimension).
    public var rowLength: Int { dims.first ?? 1 }
    /// Rows: the product of all but the first dimension.
    public var rowCount: Int { dims.dropFirst().reduce(1, *) }
    public var rowBytes: Int { byteCount / max(rowCount, 1) }
}
