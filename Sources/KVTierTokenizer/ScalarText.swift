/// A piece of UTF-8 text decoded into Unicode scalars, with each scalar's class and the
/// byte offset where it starts, so word boundaries found on scalars map back to bytes.
struct ScalarText {
    /// Scalar values.
    private(set) var values: [UInt32] = []
    /// The class of each scalar.
    private(set) var classes: [ScalarClass] = []
    /// `byteOffsets[i]` is where scalar `i` starts; one extra entry holds the end.
    private(set) var byteOffsets: [Int] = []

    init() {}

    /// Decodes `bytes[range]`. Malformed input gives U+FFFD for each bad byte (Swift strings
    /// are always well formed, so that only happens for raw bytes).
    init(_ bytes: UnsafeBufferPointer<UInt8>, range: Range<Int>) {
        load(bytes, range: range)
    }

    /// Decodes a string.
    init(_ text: String) {
        var copy = text
        copy.withUTF8 { buffer in
            load(buffer, range: 0..<buffer.count)
        }
    }

    /// Number of scalars.
    var count: Int { values.count }

    /// Replaces the content with the scalars of `bytes[range]`.
    mutating func load(_ bytes: UnsafeBufferPointer<UInt8>, range: Range<Int>) {
        values.removeAll(keepingCapacity: true)
        classes.removeAll(keepingCapacity: true)
        byteOffsets.removeAll(keepingCapacity: true)
        values.reserveCapacity(range.count)
        classes.reserveCapacity(range.count)
        byteOffsets.reserveCapacity(range.count + 1)
        var index = range.lowerBound
        let end = range.upperBound
        while index < end {
            byteOffsets.append(index)
            let lead = bytes[index]
            if lead < 0x80 {
                values.append(UInt32(lead))
                classes.append(ScalarClass.of(UInt32(lead)))
                index += 1
                continue
            }
            let (value, length) = Self.decodeMultiByte(bytes, at: index, end: end)
            values.append(value)
            classes.append(ScalarClass.of(value))
            index += length
        }
        byteOffsets.append(end)
    }

    /// Decodes one multi-byte sequence; a malformed one yields U+FFFD and consumes one byte.
    private static func decodeMultiByte(
        _ bytes: UnsafeBufferPointer<UInt8>, at index: Int, end: Int
    ) -> (UInt32, Int) {
        let lead = bytes[index]
        let length: Int
        var value: UInt32
        switch lead {
        case 0xC0...0xDF: length = 2; value = UInt32(lead & 0x1F)
        case 0xE0...0xEF: length = 3; value = UInt32(lead & 0x0F)
        case 0xF0...0xF7: length = 4; value = UInt32(lead & 0x07)
        default: return (0xFFFD, 1)
        }
        guard index + length <= end else { return (0xFFFD, 1) }
        for offset in 1..<length {
            let byte = bytes[index + offset]
            guard byte & 0xC0 == 0x80 else { return (0xFFFD, 1) }
            value = value << 6 | UInt32(byte & 0x3F)
        }
        return (value, length)
    }
}
