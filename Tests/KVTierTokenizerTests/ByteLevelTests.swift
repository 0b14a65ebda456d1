import XCTest
@testable import KVTierTokenizer

final class ByteLevelTests: XCTestCase {
    func testPrintableBytesStandForThemselves() {
        for byte in UInt8(0x21)...UInt8(0x7E) {
            XCTAssertEqual(ByteLevel.character(for: byte).value, UInt32(byte))
        }
        for byte in UInt8(0xA1)...UInt8(0xAC) {
            XCTAssertEqual(ByteLevel.character(for: byte).value, UInt32(byte))
        }
        for byte in UInt8(0xAE)...UInt8(0xFF) {
            XCTAssertEqual(ByteLevel.character(for: byte).value, UInt32(byte))
        }
    }

    func testOtherBytesAreShiftedInOrder() {
        // 0x00...0x20 take U+0100...U+0120, 0x7F takes U+0121, 0x80...0xA0 take U+0122...U+0142,
        // and 0xAD takes U+0143.
        for byte in UInt8(0x00)...UInt8(0x20) {
            XCTAssertEqual(ByteLevel.character(for: byte).value, 0x100 + UInt32(byte))
        }
        XCTAssertEqual(ByteLevel.character(for: 0x7F).value, 0x121)
        for byte in UInt8(0x80)...UInt8(0xA0) {
            XCTAssertEqual(ByteLevel.character(for: byte).value, 0x122 + UInt32(byte - 0x80))
        }
        XCTAssertEqual(ByteLevel.character(for: 0xAD).value, 0x143)
        XCTAssertEqual(ByteLevel.character(for: UInt8(ascii: " ")), "Ġ")
        XCTAssertEqual(ByteLevel.character(for: UInt8(ascii: "\n")), "Ċ")
        XCTAssertEqual(ByteLevel.character(for: UInt8(ascii: "\t")), "ĉ")
    }

    func testAllBytesRoundTrip() {
        let all = (0...255).map { UInt8($0) }
        let encoded = ByteLevel.encode(all)
        XCTAssertEqual(encoded.unicodeScalars.count, 256)
        XCTAssertEqual(Set(encoded.unicodeScalars).count, 256, "the mapping must be one-to-one")
        XCTAssertEqual(ByteLevel.decode(encoded), all)
        for byte in all {
            XCTAssertEqual(ByteLevel.byte(for: ByteLevel.character(for: byte)), byte)
        }
    }

    func testEncodeAndDecodeText() {
        XCTAssertEqual(ByteLevel.encode(Array(" the".utf8)), "Ġthe")
        XCTAssertEqual(ByteLevel.encode(Array("é".utf8)), "Ã©")
        XCTAssertEqual(ByteLevel.decode("ĠhelloĊ"), Array(" hello\n".utf8))
        XCTAssertNil(ByteLevel.decode("a b"), "a raw space is not part of the mapping")
        XCTAssertNil(ByteLevel.decode("▁x"))
    }

    func testUnknownCharactersAreMarked() {
        // "▁" is E2 96 81 in UTF-8.
        XCTAssertEqual(
            String(decoding: ByteLevel.decodeMarkingUnknown("a▁"), as: UTF8.self),
            "a[UNK_BYTE_0xe29681a▁]")
    }
}
