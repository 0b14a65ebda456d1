import KVTierRedis
import XCTest

final class RESPParserTests: XCTestCase {
    func testHashSlotsFollowTheClusterSpecification() {
        XCTAssertEqual(HashSlot.crc16(Array("123456789".utf8)), 0x31C3)  // the specification's check value
        XCTAssertEqual(HashSlot.of(Array("foo".utf8)), 12182)  // CLUSTER KEYSLOT foo
        XCTAssertEqual(
            HashSlot.of(Array("{user1000}.following".utf8)), HashSlot.of(Array("{user1000}.followers".utf8)))
        XCTAssertEqual(HashSlot.of(Array("{user1000}.x".utf8)), HashSlot.of(Array("user1000".utf8)))
        // An empty tag is no tag: the whole key is hashed.
        XCTAssertEqual(HashSlot.of(Array("foo{}{bar}".utf8)), Int(HashSlot.crc16(Array("foo{}{bar}".utf8)) % 16384))
    }

    func testRepliesSplitAnywhereAreParsedWhole() throws {
        let stream = Array(
            "+OK\r\n-MOVED 3999 127.0.0.1:6381\r\n:42\r\n$5\r\nhe\r\no\r\n$-1\r\n*2\r\n$1\r\na\r\n*-1\r\n".utf8)
        var parser = RESPParser()
        var replies: [RESPValue] = []
        for b in stream {
            parser.append([b])
            while let r = try parser.next() { replies.append(r) }
        }
        XCTAssertEqual(
            replies,
            [
                .simpleString("OK"), .error("MOVED 3999 127.0.0.1:6381"), .integer(42),
                .bulk(Array("he\r\no".utf8)), .bulk(nil), .array([.bulk(Array("a".utf8)), .array(nil)]),
            ])
        XCTAssertEqual(parser.pendingBytes, 0)
    }

    func testGarbageIsAProtocolViolationNotACrash() {
        for bad in ["?what\r\n", ":12x\r\n", "$99999999999\r\n", "$3\r\nabcXY", "*-7\r\n"] {
            var parser = RESPParser()
            parser.append(Array(bad.utf8))
            XCTAssertThrowsError(try parser.next(), bad) { error in
                guard case .protocolViolation = error as? RedisError else { return XCTFail("\(error)") }
            }
        }
    }

    func testCommandsAreEncodedAsArraysOfBulkStrings() {
        var out: [UInt8] = []
        RESPEncoder.encode([Array("SET".utf8), Array("k".utf8), [0, 13, 10]], into: &out)
        XCTAssertEqual(out, Array("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n".utf8) + [0, 13, 10, 13, 10])
    }
}
