import XCTest

@testable import KVTierStore

final class ShuffledLZ4CodecTests: XCTestCase {
    func testRoundTripWithAndWithoutShuffle() throws {
        var halves: [UInt8] = []
        for i in 0..<4096 {
            let h = Float16(sin(Float(i) / 50)).bitPattern
            halves += [UInt8(h & 0xff), UInt8(h >> 8)]
        }
        for shuffle in [true, false] {
            let c = ShuffledLZ4Codec.compress(halves, shuffle: shuffle)
            XCTAssertLessThan(c.count, halves.count)
            XCTAssertEqual(try ShuffledLZ4Codec.decompress(c, originalCount: halves.count, shuffle: shuffle), halves)
        }
        XCTAssertEqual(ShuffledLZ4Codec.byteUnshuffle(ShuffledLZ4Codec.byteShuffle([1, 2, 3, 4, 5])), [1, 2, 3, 4, 5])
        XCTAssertEqual(ShuffledLZ4Codec.byteShuffle([1, 2, 3, 4]), [1, 3, 2, 4])
    }

    func testDamagedInputIsAnError() {
        let data = [UInt8](repeating: 7, count: 1000)
        var c = ShuffledLZ4Codec.compress(data)
        XCTAssertThrowsError(try ShuffledLZ4Codec.decompress(c, originalCount: 999))
        c[0] ^= 0xff
        XCTAssertThrowsError(try ShuffledLZ4Codec.decompress(Array(c.prefix(3)), originalCount: 1000))
        XCTAssertThrowsError(try ShuffledLZ4Codec.decompress([], originalCount: 10))
        XCTAssertEqual(try ShuffledLZ4Codec.decompress([], originalCount: 0), [])
    }
}
