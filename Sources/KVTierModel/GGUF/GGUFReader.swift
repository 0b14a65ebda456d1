// Unsafe-pointer fence: bounds-checked reads from the mapped GGUF header.

/// A cursor over untrusted bytes: every read checks the remaining length first and
/// throws `GGUFError.truncated` with the offset instead of reading out of bounds.
struct GGUFReader {
    let bytes: UnsafeRawBufferPointer
    private(set) var offset: Int = 0

    init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    var remaining: Int { bytes.count - offset }

    mutating func need(_ n: Int, _ what: @autoclosure () -> String) throws(GGUFError) {
        guard n >= 0, n <= remaining else {
            throw GGUFError.truncated(offset: offset, needed: n, what: what())
        }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws(GGUFError) -> T {
        try need(MemoryLayout<T>.size, what())
        let v = bytes.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return T(littleEndian: v)
    }

    mutating func readCount(_ what: @autoclosure () -> String, elementSize: Int) throws(GGUFError) -> Int {
        let start = offset
        let raw = try read(UInt64.self, what())
        // A count whose elements cannot fit in the rest of the file is corruption, not a reason to allocate.
        guard raw <= UInt64(Int.max), Int(raw) <= remaining / max(elementSize, 1) else {
            throw GGUFError.invalidValue(offset: start, what: "\(what()) count \(raw) exceeds the file size")
        }
        return Int(raw)
    }

    mutating func readString(_ what: @autoclosure () -> String) throws(GGUFError) -> String {
        let n = try readCount(what(), elementSize: 1)
        let start = offset
        let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<start + n]), as: UTF8.self)
        offset += n
        return s
    }

    mutating func readValue(type raw: UInt32, _ what: String, depth: Int = 0) throws(GGUFError) -> GGUFValue {
        let at = offset
        guard let type = GGUFValue.TypeID(rawValue: raw) else {
            throw GGUFError.invalidValue(offset: at, what: "\(what) has unknown value type \(raw)")
        }
        switch type {
        case .uint8: return .uint8(try read(UInt8.self, what))
        case .int8: return .int8(try read(Int8.self, what))
        case .uint16: return .uint16(try read(UInt16.self, what))
        case .int16: return .int16(try read(Int16.self, what))
        case .uint32: return .uint32(try read(UInt32.self, what))
        case .int32: return .int32(try read(Int32.self, what))
        case .uint64: return .uint64(try read(UInt64.self, what))
        case .int64: return .int64(try read(Int64.self, what))
        case .float32: return .float32(Float(bitPattern: try read(UInt32.self, what)))
        case .float64: return .float64(Double(bitPattern: try read(UInt64.self, what)))
        case .bool:
            let b = try read(UInt8.self, what)
            guard b <= 1 else { throw GGUFError.invalidValue(offset: at, what: "\(what) is a bool with value \(b)") }
            return .bool(b == 1)
        case .string: return .string(try readString(what))
        case .array:
            guard depth < 4 else { throw GGUFError.invalidValue(offset: at, what: "\(what) nests arrays too deeply") }
            let elementRaw = try read(UInt32.self, what)
            guard let element = GGUFValue.TypeID(rawValue: elementRaw) else {
                throw GGUFError.invalidValue(offset: at, what: "\(what) is an array of unknown type \(elementRaw)")
            }
            let count = try readCount(what, elementSize: element.minimumSize)
            var items: [GGUFValue] = []
            items.reserveCapacity(count)
            for _ in 0..<count {
                items.append(try readValue(type: elementRaw, what, depth: depth + 1))
            }
            return .array(elementType: elementRaw, items)
        }
    }
}
