/// A parsed GGUF (v2/v3) model file over a read-only mmap.
///
/// Parsing validates everything it touches: value types, counts against the file size,
/// tensor shapes, types and that every tensor's data lies inside the file and is aligned.
/// The returned object is immutable and `Sendable`.
public final class GGUFFile: Sendable {
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// Tensors in file order.
    public let tensors: [GGUFTensor]
    public let alignment: Int
    public let dataOffset: Int
    public let fileSize: Int
    public let path: String
    private let tensorIndex: [String: Int]
    private let mapping: MappedFile

    public convenience init(path: String) throws(GGUFError) {
        try self.init(mapping: MappedFile(path: path))
    }

    init(mapping: MappedFile) throws(GGUFError) {
        self.mapping = mapping
        self.path = mapping.path
        let bytes = mapping.bytes
        self.fileSize = bytes.count
        var r = GGUFReader(bytes: bytes)

        let magic = try r.read(UInt32.self, "magic")
        guard magic == 0x4655_4747 else { throw GGUFError.badMagic(found: magic) }
        let version = try r.read(UInt32.self, "version")
        guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(version) }
        self.version = version
        let tensorCount = try r.readCount("tensor", elementSize: 24)
        let kvCount = try r.readCount("metadata", elementSize: 12)

        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        for i in 0..<kvCount {
            let keyOffset = r.offset
            let key = try r.readString("metadata key #\(i)")
            guard !key.isEmpty else {
                throw GGUFError.invalidValue(offset: keyOffset, what: "metadata key #\(i) is empty")
            }
            guard metadata[key] == nil else { throw GGUFError.duplicateKey(key) }
            let type = try r.read(UInt32.self, "type of '\(key)'")
            metadata[key] = try r.readValue(type: type, "metadata '\(key)'")
            keys.append(key)
        }
        self.metadata = metadata
        self.metadataKeys = keys

        var alignment = 32
        if let a = metadata["general.alignment"] {
            guard let v = a.intValue, v > 0, v & (v - 1) == 0, v <= 1 << 20 else {
                throw GGUFError.invalidValue(offset: 0, what: "general.alignment \(a.summary) is not a power of two")
            }
            alignment = v
        }
        self.alignment = alignment

        struct RawInfo {
            let name: String
            let type: GGMLType
            let dims: [Int]
            let relOffset: Int
            let bytes: Int
        }
        var infos: [RawInfo] = []
        infos.reserveCapacity(tensorCount)
        var index: [String: Int] = [:]
        for i in 0..<tensorCount {
            let at = r.offset
            let name = try r.readString("tensor #\(i) name")
            guard index[name] == nil else {
                throw GGUFError.invalidValue(offset: at, what: "tensor '\(name)' appears twice")
            }
            let nDims = try r.read(UInt32.self, "tensor '\(name)' dimension count")
            guard (1...4).contains(nDims) else {
                throw GGUFError.invalidValue(
                    offset: at, what: "tensor '\(name)' has \(nDims) dimensions (1...4 allowed)")
            }
            var dims: [Int] = []
            var elements = 1
            for _ in 0..<nDims {
                let d = try r.read(UInt64.self, "tensor '\(name)' dimensions")
                guard d > 0, d < 1 << 40 else {
                    throw GGUFError.invalidValue(offset: at, what: "tensor '\(name)' has dimension \(d)")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: Int(d))
                guard !overflow, product < 1 << 44 else {
                    throw GGUFError.invalidValue(offset: at, what: "tensor '\(name)' is implausibly large")
                }
                elements = product
                dims.append(Int(d))
            }
            let rawType = try r.read(UInt32.self, "tensor '\(name)' type")
            guard let type = GGMLType(rawValue: rawType) else {
                throw GGUFError.unsupportedTensorType(tensor: name, type: rawType)
            }
            guard let rowBytes = type.rowBytes(dims[0]) else {
                throw GGUFError.invalidValue(
                    offset: at,
                    what:
                        "tensor '\(name)' row of \(dims[0]) is not a multiple of "
                        + "\(type)'s block of \(type.blockElements)"
                )
            }
            let relOffset = try r.read(UInt64.self, "tensor '\(name)' offset")
            guard relOffset < UInt64(bytes.count), Int(relOffset) % alignment == 0 else {
                throw GGUFError.invalidValue(
                    offset: at, what: "tensor '\(name)' data offset \(relOffset) is out of range or unaligned")
            }
            index[name] = infos.count
            infos.append(
                RawInfo(
                    name: name, type: type, dims: dims, relOffset: Int(relOffset),
                    bytes: rowBytes * (elements / dims[0])))
        }

        let dataOffset = (r.offset + alignment - 1) / alignment * alignment
        self.dataOffset = dataOffset
        var tensors: [GGUFTensor] = []
        tensors.reserveCapacity(infos.count)
        for info in infos {
            let start = dataOffset + info.relOffset
            guard start <= bytes.count, info.bytes <= bytes.count - start else {
                throw GGUFError.tensorOutOfBounds(
                    tensor: info.name, offset: start, size: info.bytes, fileSize: bytes.count)
            }
            tensors.append(
                GGUFTensor(name: info.name, type: info.type, dims: info.dims, fileOffset: start, byteCount: info.bytes))
        }
        self.tensors = tensors
        self.tensorIndex = index
    }

    public func tensor(_ name: String) -> GGUFTensor? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// The tensor's bytes inside the mapping (valid while this file object lives).
    public func data(of tensor: GGUFTensor) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: mapping.bytes[tensor.fileOffset..<tensor.fileOffset + tensor.byteCount])
    }

    /// The whole mapped file.
    public var bytes: UnsafeRawBufferPointer { mapping.bytes }

    /// Drops the resident pages of a tensor's bytes (see `MappedFile.dropResidentPages`).
    public func dropResidentPages(of tensor: GGUFTensor) {
        mapping.dropResidentPages(tensor.fileOffset..<tensor.fileOffset + tensor.byteCount)
    }

    /// Drops the resident pages of all tensor data, for after a pass that read every byte (the
    /// model fingerprint) while the weights the kernels use live in repacked copies.
    public func dropResidentTensorPages() {
        mapping.dropResidentPages(dataOffset..<mapping.bytes.count)
    }

    // MARK: Typed metadata access

    public func string(_ key: String) throws(GGUFError) -> String {
        guard let v = metadata[key] else { throw GGUFError.missingKey(key) }
        guard let s = v.stringValue else { throw GGUFError.wrongKeyType(key: key, expected: "string") }
        return s
    }

    public func int(_ key: String) throws(GGUFError) -> Int {
        guard let v = metadata[key] else { throw GGUFError.missingKey(key) }
        guard let i = v.intValue else { throw GGUFError.wrongKeyType(key: key, expected: "integer") }
        return i
    }

    public func float(_ key: String) throws(GGUFError) -> Double {
        guard let v = metadata[key] else { throw GGUFError.missingKey(key) }
        guard let f = v.floatValue else { throw GGUFError.wrongKeyType(key: key, expected: "number") }
        return f
    }

    public func stringArray(_ key: String) throws(GGUFError) -> [String] {
        guard let v = metadata[key] else { throw GGUFError.missingKey(key) }
        guard let a = v.arrayValue else { throw GGUFError.wrongKeyType(key: key, expected: "array of strings") }
        var out: [String] = []
        out.reserveCapacity(a.count)
        for item in a {
            guard let s = item.stringValue else { throw GGUFError.wrongKeyType(key: key, expected: "array of strings") }
            out.append(s)
        }
        return out
    }

    public func intArray(_ key: String) throws(GGUFError) -> [Int] {
        guard let v = metadata[key] else { throw GGUFError.missingKey(key) }
        guard let a = v.arrayValue else { throw GGUFError.wrongKeyType(key: key, expected: "array of integers") }
        var out: [Int] = []
        out.reserveCapacity(a.count)
        for item in a {
            guard let i = item.intValue else { throw GGUFError.wrongKeyType(key: key, expected: "array of integers") }
            out.append(i)
        }
        return out
    }
}
