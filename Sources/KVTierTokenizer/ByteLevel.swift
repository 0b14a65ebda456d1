/// The reversible byte-to-character mapping of byte-level BPE vocabularies.
///
/// Every byte value is given a printable Unicode scalar: the printable Latin-1 bytes
/// (`!`...`~`, `¡`...`¬`, `®`...`ÿ`) stand for themselves and the remaining 68 bytes
/// (controls, space, DEL, NBSP, soft hyphen, ...) are given U+0100 onwards, in byte order.
/// A space is therefore written `Ġ` (U+0120) and a newline `Ċ` (U+010A).
public enum ByteLevel {
    /// The scalar value that stands for each byte.
    static let scalarForByte: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for byte in 0..<256 {
            if standsForItself(UInt8(byte)) {
                table[byte] = UInt32(byte)
            } else {
                table[byte] = next
                next += 1
            }
        }
        return table
    }()

    /// The byte each scalar below `byteForScalar.count` stands for, or -1.
    static let byteForScalar: [Int16] = {
        var table = [Int16](repeating: -1, count: 256 + 68)
        for (byte, scalar) in scalarForByte.enumerated() {
            table[Int(scalar)] = Int16(byte)
        }
        return table
    }()

    private static func standsForItself(_ byte: UInt8) -> Bool {
        (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte) || (0xAE...0xFF).contains(byte)
    }

    /// The characters that stand for each byte.
    static let characterForByte: [Unicode.Scalar] = scalarForByte.map { Unicode.Scalar($0) ?? "?" }

    /// The character that stands for `byte` in vocabulary text.
    public static func character(for byte: UInt8) -> Unicode.Scalar {
        characterForByte[Int(byte)]
    }

    /// The byte a vocabulary character stands for, or nil if it is not part of the mapping.
    public static func byte(for scalar: Unicode.Scalar) -> UInt8? {
        byte(forScalarValue: scalar.value)
    }

    @inline(__always)
    static func byte(forScalarValue value: UInt32) -> UInt8? {
        guard value < UInt32(byteForScalar.count) else { return nil }
        let byte = byteForScalar[Int(value)]
        return byte < 0 ? nil : UInt8(byte)
    }

    /// Writes raw bytes in vocabulary form (`" the"` becomes `"Ġthe"`).
    public static func encode<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var scalars = String.UnicodeScalarView()
        for byte in bytes {
            scalars.append(character(for: byte))
        }
        return String(scalars)
    }

    /// Reads vocabulary text back into raw bytes; nil if a character is not part of the mapping.
    public static func decode(_ text: String) -> [UInt8]? {
        decode(scalars: text.unicodeScalars)
    }

    /// Reads vocabulary characters back into raw bytes; nil if one is not part of the mapping.
    static func decode<Scalars: Sequence>(scalars: Scalars) -> [UInt8]? where Scalars.Element == Unicode.Scalar {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(scalars.underestimatedCount)
        for scalar in scalars {
            guard let byte = byte(forScalarValue: scalar.value) else { return nil }
            bytes.append(byte)
        }
        return bytes
    }

    /// Like `decode`, but turns each character outside the mapping into an `[UNK_BYTE_0x..]`
    /// marker holding its UTF-8 bytes in hex followed by the whole token text, so a token
    /// that cannot be decoded is still visible.
    static func decodeMarkingUnknown(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            if let byte = byte(forScalarValue: scalar.value) {
                bytes.append(byte)
                continue
            }
            bytes.append(contentsOf: Array("[UNK_BYTE_0x".utf8))
            for unit in String(scalar).utf8 {
                bytes.append(hexDigit(unit >> 4))
                bytes.append(hexDigit(unit & 0x0F))
            }
            bytes.append(contentsOf: Array(text.utf8))
            bytes.append(UInt8(ascii: "]"))
        }
        return bytes
    }

    private static func hexDigit(_ nibble: UInt8) -> UInt8 {
        nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
    }
}
