import Foundation
import XCTest

@testable import KVTierStore

final class DRAMTierTests: XCTestCase {
    private let model = ModelFingerprint(value: 0x5eed)

    /// A block of `tokens` tokens, `rowWidth` F16 elements per row: 4 * tokens * rowWidth bytes.
    private func block(_ session: String, layer: Int = 0, start: Int = 0, tokens: Int = 16, rowWidth: Int = 8,
                       model: ModelFingerprint? = nil, seed: Int = 0) -> KVBlock {
        let key = BlockKey(model: model ?? self.model, session: session, layer: layer, start: start, count: tokens)
        var payload: [UInt8] = []
        payload.reserveCapacity(4 * tokens * rowWidth)
        for i in 0..<(2 * tokens * rowWidth) {
            let h = Float16(sin(Float(i + seed * 7919) / 9) * 3).bitPattern
            payload += [UInt8(h & 0xff), UInt8(h >> 8)]
        }
        return KVBlock(key: key, elementType: .f16, rowWidth: rowWidth, payload: payload)
    }

    func testCapacityIsNeverExceededAndNeedsRoomIsReported() {
        let b = block("a")  // 512 bytes
        XCTAssertEqual(b.payload.count, 512)
        let tier = DRAMTier(configuration: .init(capacityBytes: 3 * 512 + 100))
        XCTAssertEqual(tier.insert(block("a", layer: 0)), .stored)
        XCTAssertEqual(tier.insert(block("a", layer: 1)), .stored)
        XCTAssertEqual(tier.insert(block("b", layer: 0)), .stored)
        XCTAssertEqual(tier.usedBytes, 3 * 512)
        XCTAssertEqual(tier.insert(block("c", layer: 0)), .needsRoom(bytes: 4 * 512 - (3 * 512 + 100)))
        XCTAssertFalse(tier.contains(block("c").key), "a refused insert stores nothing")
        XCTAssertEqual(tier.usedBytes, 3 * 512)
        XCTAssertEqual(tier.blockCount, 3)

        // Replacing a block accounts for the one it replaces.
        XCTAssertEqual(tier.insert(block("b", layer: 0, seed: 1)), .stored)
        XCTAssertEqual(tier.usedBytes, 3 * 512)
        // Same key with a wider row (640 bytes): only the difference must fit.
        XCTAssertEqual(tier.insert(block("b", layer: 0, rowWidth: 10)), .needsRoom(bytes: 3 * 512 - 512 + 640 - (3 * 512 + 100)))
        // Another key (20 tokens) needs its whole size.
        XCTAssertEqual(tier.insert(block("b", layer: 0, tokens: 20)), .needsRoom(bytes: 3 * 512 + 640 - (3 * 512 + 100)))
        XCTAssertEqual(tier.insert(block("b", layer: 0, rowWidth: 4)), .stored)
        XCTAssertEqual(tier.usedBytes, 2 * 512 + 256)
        XCTAssertEqual(tier.insert(block("b", layer: 0)), .stored)

        // A block larger than everything can never fit.
        XCTAssertEqual(tier.insert(block("huge", tokens: 64)), .tooLarge(bytes: 2048, capacity: 3 * 512 + 100))

        // The store demotes a victim, then the insert succeeds.
        XCTAssertNotNil(tier.get(block("a", layer: 0).key, recordLookup: false))
        XCTAssertTrue(tier.remove(block("a", layer: 0).key, departure: .demoted))
        XCTAssertFalse(tier.remove(block("a", layer: 0).key))
        XCTAssertEqual(tier.insert(block("c", layer: 0)), .stored)
        XCTAssertLessThanOrEqual(tier.usedBytes, tier.capacityBytes)

        let s = tier.stats
        XCTAssertEqual(s.capacityBytes, 3 * 512 + 100)
        XCTAssertEqual(s.usedBytes, 3 * 512)
        XCTAssertEqual(s.blocks, 3)
        XCTAssertEqual(s.evictions, 1)
        XCTAssertEqual(s.demotions, 1)
        XCTAssertEqual(s.bytesIn, 6 * 512 + 256)
        XCTAssertEqual(s.bytesOut, 512)
        XCTAssertEqual(s.hits, 0, "a demotion read is not a lookup")
        XCTAssertNil(s.compressionRatio)
    }

    func testLookupsKeysSessionsAndRecency() {
        let tier = DRAMTier()
        XCTAssertEqual(tier.capacityBytes, 4 << 30)
        for layer in [2, 0, 1] { XCTAssertEqual(tier.insert(block("s1", layer: layer)), .stored) }
        XCTAssertEqual(tier.insert(block("s1", layer: 0, start: 16)), .stored)
        XCTAssertEqual(tier.insert(block("s2", layer: 0), arrival: .promoted), .stored)
        XCTAssertEqual(tier.insert(block("s3", layer: 0)), .stored)

        let keys = tier.keys(session: "s1")
        XCTAssertEqual(keys.map { [$0.layer, $0.start] }, [[0, 0], [0, 16], [1, 0], [2, 0]])
        XCTAssertEqual(tier.sessions, ["s1", "s2", "s3"])
        XCTAssertEqual(tier.bytes(session: "s1"), 4 * 512)
        XCTAssertEqual(tier.keys(session: "nobody"), [])

        // Same session, layer and tokens under another model: never returned.
        let other = ModelFingerprint(value: 0xbad)
        XCTAssertNil(tier.get(block("s1", model: other).key))
        XCTAssertEqual(tier.keys(session: "s1", model: other), [])
        XCTAssertEqual(tier.keys(session: "s1", model: model).count, 4)

        let original = block("s1", layer: 1)
        let got = tier.get(original.key)
        XCTAssertEqual(got?.payload, original.payload)
        XCTAssertEqual(got?.checksum, original.checksum)

        // Recency: s1 was just read; touching s2 makes s3 the least recently used.
        tier.touch(session: "s2")
        XCTAssertEqual(tier.sessionsByRecency, ["s3", "s1", "s2"])

        XCTAssertEqual(tier.removeAll(session: "s1"), 4)
        XCTAssertEqual(tier.sessions, ["s2", "s3"])
        XCTAssertFalse(tier.contains(original.key))

        let s = tier.stats
        XCTAssertEqual(s.hits, 1)
        XCTAssertEqual(s.misses, 1)
        XCTAssertEqual(s.promotions, 1)
        XCTAssertEqual(s.evictions, 0, "deleting is not evicting")
        XCTAssertEqual(s.blocks, 2)
        XCTAssertEqual(s.usedBytes, 2 * 512)
    }

    func testCompressedBlocksRoundTripAndCorruptionIsAMiss() throws {
        let tier = DRAMTier(configuration: .init(capacityBytes: 1 << 20, compress: true))
        let blocks = (0..<4).map { block("z", layer: $0, tokens: 64, rowWidth: 64, seed: $0) }
        for b in blocks { XCTAssertEqual(tier.insert(b), .stored) }
        let raw = blocks.reduce(0) { $0 + $1.payload.count }
        XCTAssertLessThan(tier.usedBytes, raw, "smooth F16 data compresses")
        XCTAssertEqual(tier.bytes(session: "z"), tier.usedBytes)
        let ratio = try XCTUnwrap(tier.stats.compressionRatio)
        XCTAssertEqual(ratio, Double(raw) / Double(tier.usedBytes), accuracy: 1e-9)
        XCTAssertGreaterThan(ratio, 1)

        for b in blocks {
            let got = try XCTUnwrap(tier.get(b.key))
            XCTAssertEqual(got.payload, b.payload)
            XCTAssertEqual(got.key, b.key)
            XCTAssertEqual(got.rowWidth, b.rowWidth)
            XCTAssertEqual(got.elementType, .f16)
        }

        // The last bytes of an LZ4 block are always literals: a flipped bit there changes the
        // decompressed payload, which the checksum must catch.
        let victim = blocks[2].key
        XCTAssertTrue(tier.damageStoredBytes(of: victim, at: 0))  // the first token: lengths no longer add up
        XCTAssertNil(tier.get(victim))
        XCTAssertEqual(tier.insert(blocks[2]), .stored)
        let stored = tier.usedBytes
        XCTAssertTrue(tier.damageStoredBytes(of: victim, at: -1))  // the last literal
        XCTAssertNil(tier.get(victim), "a damaged block is never returned")
        XCTAssertFalse(tier.contains(victim), "a damaged block is dropped")
        XCTAssertLessThan(tier.usedBytes, stored)
        XCTAssertEqual(tier.stats.checksumFailures, 2)
        XCTAssertEqual(tier.stats.misses, 2)
        XCTAssertEqual(tier.stats.hits, 4)
        XCTAssertNotNil(tier.get(blocks[3].key), "other blocks are unaffected")
    }

    /// 8 clients insert, read and remove at random; the used bytes never exceed the capacity
    /// and always equal the sum of what the clients believe is stored.
    func testConcurrentClientsNeverExceedCapacity() {
        let capacity = 40 * 512
        let tier = DRAMTier(configuration: .init(capacityBytes: capacity))
        let problems = Problems()
        let done = DispatchGroup()
        let base = self.block("template")
        for t in 0..<8 {
            done.enter()
            Thread {
                var rng = SystemRandomNumberGenerator()
                var mine: [BlockKey] = []
                for op in 0..<1500 {
                    let roll = Int.random(in: 0..<10, using: &rng)
                    if roll < 5 || mine.isEmpty {
                        var key = base.key
                        key.session = "t\(t)"
                        key.start = op * 16
                        let tokens = Int.random(in: 1...32, using: &rng)
                        key.count = tokens
                        let b = KVBlock(key: key, elementType: .f16, rowWidth: 8,
                                        payload: [UInt8](repeating: UInt8(t), count: 32 * tokens))
                        switch tier.insert(b) {
                        case .stored: mine.append(key)
                        case .needsRoom(let n) where n > 0: break
                        case let other: problems.add("thread \(t): unexpected \(other)")
                        }
                    } else if roll < 8 {
                        let key = mine[Int.random(in: 0..<mine.count, using: &rng)]
                        if let b = tier.get(key), b.payload.contains(where: { $0 != UInt8(t) }) {
                            problems.add("thread \(t): block \(key) holds another client's bytes")
                        }
                    } else {
                        let key = mine.remove(at: Int.random(in: 0..<mine.count, using: &rng))
                        if !tier.remove(key, departure: .demoted) { problems.add("thread \(t): \(key) vanished") }
                    }
                    if tier.usedBytes > capacity { problems.add("thread \(t) op \(op): used \(tier.usedBytes) > \(capacity)") }
                }
                for key in mine { tier.remove(key) }
                done.leave()
            }.start()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 300), .success)
        XCTAssertEqual(problems.list, [])
        XCTAssertEqual(tier.usedBytes, 0)
        XCTAssertEqual(tier.blockCount, 0)
        XCTAssertEqual(tier.sessions, [])
    }
}

private final class Problems: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ s: String) { lock.withLock { items.append(s) } }
    var list: [String] { lock.withLock { Array(items.prefix(10)) } }
}
