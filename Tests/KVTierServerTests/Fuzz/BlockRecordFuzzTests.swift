import Foundation
import KVTierModel
import XCTest

@testable import KVTierStore

/// Fuzz target `block-record`: mutated disk records through the store's own decoders
/// (`DiskRecordFormat.decodeValue`, `decodeKey`, `decodeIndexValue`). Half the inputs get their
/// header checksum recomputed after mutation (and some their data length fixed too), so the
/// header checks behind it, the LZ4 decoder and the unshuffle run on damaged data, the way
/// Redis's corrupt-dump fuzzer skips its checksum. Every input decodes to a well-formed block
/// whose payload checksum holds, or fails with a reason.
final class BlockRecordFuzzTests: XCTestCase {
    static let key = BlockKey(model: ModelFingerprint(value: 0x5EED_F00D_0000_0001), session: "1000:chat-é", layer: 3, start: 256, count: 16)

    static var corpus: [[UInt8]] {
        var rng = SplitMix64(seed: 42)
        func payload(_ type: KVElementType, rowWidth: Int, random: Bool) -> [UInt8] {
            (0..<(2 * key.count * rowWidth * type.byteWidth)).map { i in random ? UInt8(truncatingIfNeeded: rng.next()) : UInt8(i % 7 == 0 ? i & 0x3F : 0) }
        }
        var c: [[UInt8]] = []
        for (type, rowWidth) in [(KVElementType.f16, 8), (.f32, 4), (.f16, 64)] {
            for random in [false, true] {
                for shuffle in [true, false] {
                    let block = KVBlock(key: key, elementType: type, rowWidth: rowWidth, payload: payload(type, rowWidth: rowWidth, random: random))
                    c.append(DiskRecordFormat.encodeValue(block, shuffle: shuffle))
                }
            }
        }
        c.append(DiskRecordFormat.encodeKey(key, prefix: DiskRecordFormat.blockPrefix))
        c.append(DiskRecordFormat.encodeIndexValue(.init(storedBytes: 300, rawBytes: 512)))
        return c
    }

    func testBlockRecordFuzz() {
        let mutator = ByteMutator(corpus: Self.corpus, formats: [], dictionary: [])
        FuzzRunner(target: "block-record", quickInputs: 10_000).run(generate: { rng in
            var value = mutator.generate(&rng)
            // Below the checksum: make the header's own CRC right again.
            if value.count >= DiskRecordFormat.headerSize, !rng.oneIn(2) {
                if rng.oneIn(2) { Self.store(&value, UInt64(value.count - DiskRecordFormat.headerSize), at: 28) }
                Self.store(&value, UInt64(Checksum.crc32c(Array(value[0..<32]))), at: 32)
            }
            return value
        }) { input, _ in
            try Self.check(input)
        }
    }

    static func store(_ b: inout [UInt8], _ v: UInt64, at offset: Int) {
        for i in 0..<4 { b[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }

    static func check(_ input: [UInt8]) throws -> String {
        var outcome: String
        switch DiskRecordFormat.decodeValue(input, for: key) {
        case .success(let block):
            guard block.isWellFormed, Checksum.crc32c(block.payload) == block.checksum else {
                throw FuzzRunner.Violation("decoded a block that is not well-formed or fails its checksum")
            }
            outcome = "block"
        case .failure(let f):
            guard !f.description.isEmpty else { throw FuzzRunner.Violation("a decode failure without a reason") }
            // The kind of failure: the text before its first number (or model fingerprint).
            outcome = String(f.description.prefix(while: { !$0.isNumber }).prefix(while: { $0 != "(" }))
            if outcome.hasPrefix("header names model") { outcome = "header names model" }
        }
        if let k = DiskRecordFormat.decodeKey(input, prefix: DiskRecordFormat.blockPrefix) {
            guard DiskRecordFormat.encodeKey(k, prefix: DiskRecordFormat.blockPrefix) == input else {
                throw FuzzRunner.Violation("key \(k) does not encode back to its bytes")
            }
            outcome += " key"
        }
        if DiskRecordFormat.decodeIndexValue(input) != nil { outcome += " index" }
        return outcome
    }
}
