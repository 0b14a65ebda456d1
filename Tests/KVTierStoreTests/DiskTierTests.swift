import Foundation
import KVTierModel
import XCTest

@testable import KVTierStore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class DiskTierTests: XCTestCase {
    private let modelA = ModelFingerprint(value: 0x1111_2222_3333_4444)
    private let modelB = ModelFingerprint(value: 0x1111_2222_3333_4445)

    // MARK: - Round trip

    /// LZ4 stays only where it pays: a block it shrinks by under a tenth (F16 KV shrinks by about
    /// 2%) is stored raw, so reading it costs no decompression; a compressible block is packed.
    func testBlocksAreStoredRawUnlessLZ4SavesATenth() throws {
        let tier = try DiskTier(directory: try temporaryDirectory(), capacityBytes: 1 << 30)
        let bytes = 2 * 64 * 192 * 2
        var rng = SplitMix64(seed: 7)
        // Noise but for a run of equal bytes, a twentieth of the block: LZ4 saves about 5%.
        var noisy = (0..<bytes).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        for i in 0..<(bytes / 20) { noisy[i] = 0x3C }
        let flat = [UInt8](repeating: 0x3C, count: bytes)
        for (name, payload) in [("noisy", noisy), ("flat", flat)] {
            try tier.put(
                KVBlock(key: BlockKey(model: modelA, session: name, layer: 0, start: 0, count: 64), elementType: .f16,
                        rowWidth: 192, payload: payload), sync: false)
        }
        let noisyKey = BlockKey(model: modelA, session: "noisy", layer: 0, start: 0, count: 64)
        let flatKey = BlockKey(model: modelA, session: "flat", layer: 0, start: 0, count: 64)
        let packed = ShuffledLZ4Codec.compress(noisy).count
        XCTAssertGreaterThan(Double(packed), 0.9 * Double(bytes), "the noisy block saves less than a tenth")
        XCTAssertLessThan(packed, bytes, "but LZ4 would shrink it a little")
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(tier.storedBytes(of: noisyKey)), bytes, "stored raw")
        XCTAssertLessThan(try XCTUnwrap(tier.storedBytes(of: flatKey)), bytes / 10, "stored compressed")
        XCTAssertEqual(tier.get(noisyKey).block?.payload, noisy)
        XCTAssertEqual(tier.get(flatKey).block?.payload, flat)
    }

    func testDiskTierRoundTripsF16AndF32Blocks() throws {
        let dir = try temporaryDirectory()
        let tier = try DiskTier(directory: dir, capacityBytes: 1 << 30)
        var rng = SplitMix64(seed: 42)
        var blocks: [KVBlock] = []
        var tokenCounts = [1, 2, 3, 7, 63, 64, 255, 256, 299, 300]
        for _ in 0..<10 { tokenCounts.append(1 + Int(rng.next() % 300)) }
        for (i, tokens) in tokenCounts.enumerated() {
            blocks.append(makeBlock(model: modelA, session: "s\(i % 3)", layer: i % 30, start: i * 300, tokens: tokens, rng: &rng))
        }
        blocks.append(makeBlock(model: modelA, session: "f32", layer: 5, start: 0, tokens: 77, type: .f32, rng: &rng))
        // Incompressible bytes: stored without LZ4, must round-trip all the same.
        let randomPayload = (0..<(2 * 50 * 192 * 2)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        blocks.append(KVBlock(key: BlockKey(model: modelA, session: "random", layer: 0, start: 0, count: 50),
                              elementType: .f16, rowWidth: 192, payload: randomPayload))

        for block in blocks { try tier.put(block, sync: false) }
        for block in blocks {
            let read = try XCTUnwrap(tier.get(block.key).block, "block \(block.key) missing")
            assertSameBlock(read, block)
        }
        XCTAssertEqual(tier.stats.hits, blocks.count)
        XCTAssertEqual(tier.stats.blockCount, blocks.count)
        let summary = tier.stats.tierStats
        XCTAssertEqual(summary.tier, "disk")
        XCTAssertEqual(summary.usedBytes, tier.stats.storedBytes)
        XCTAssertEqual(summary.bytesIn, blocks.reduce(0) { $0 + $1.payload.count })
        XCTAssertEqual(summary.bytesOut, summary.bytesIn)
        XCTAssertEqual(tier.stats.rawBytes, blocks.reduce(0) { $0 + $1.payload.count })
        XCTAssertGreaterThan(tier.stats.compressionRatio, 1.2, "synthetic KV should compress with shuffle + LZ4")

        // Another model, another session, another range: misses.
        var other = blocks[0].key
        other.model = modelB
        XCTAssertNil(tier.get(other).block)
        XCTAssertFalse(tier.contains(other))
        var otherSession = blocks[0].key
        otherSession.session = "nobody"
        XCTAssertNil(tier.get(otherSession).block)
        var otherCount = blocks[0].key
        otherCount.count += 1
        XCTAssertNil(tier.get(otherCount).block)
        XCTAssertEqual(tier.stats.misses, 3)
        XCTAssertEqual(tier.stats.corruptBlocks, 0)

        // Replacing a block keeps the accounting exact.
        let before = tier.stats
        let replacement = makeBlock(model: modelA, session: blocks[0].key.session, layer: blocks[0].key.layer,
                                    start: blocks[0].key.start, tokens: blocks[0].key.count, rng: &rng)
        try tier.put(replacement, sync: false)
        XCTAssertEqual(tier.stats.blockCount, before.blockCount)
        XCTAssertEqual(tier.stats.rawBytes, before.rawBytes)
        assertSameBlock(try XCTUnwrap(tier.get(replacement.key).block), replacement)

        XCTAssertEqual(tier.sessions(model: modelA), ["f32", "random", "s0", "s1", "s2"])
        XCTAssertEqual(tier.sessions(model: modelB), [])
        let s1 = tier.keys(model: modelA, session: "s1")
        XCTAssertEqual(s1, blocks.map(\.key).filter { $0.session == "s1" }.sorted { ($0.layer, $0.start) < ($1.layer, $1.start) })
        XCTAssertEqual(try tier.deleteSession(model: modelA, session: "s1"), s1.count)
        XCTAssertEqual(tier.keys(model: modelA, session: "s1"), [])
        XCTAssertNil(tier.get(s1[0]).block)
        try tier.close()
    }

    func testDiskTierRejectsMalformedBlocks() throws {
        let tier = try DiskTier(directory: try temporaryDirectory(), capacityBytes: 1 << 20)
        let short = KVBlock(key: BlockKey(model: modelA, session: "s", layer: 0, start: 0, count: 4),
                            elementType: .f16, rowWidth: 192, payload: [1, 2, 3, 4])
        XCTAssertThrowsError(try tier.put(short, sync: false)) { error in
            guard case DiskTierError.invalidBlock = error else { return XCTFail("\(error)") }
        }
        let bigLayer = KVBlock(key: BlockKey(model: modelA, session: "s", layer: 70_000, start: 0, count: 1),
                               elementType: .f16, rowWidth: 1, payload: [0, 0, 0, 0])
        XCTAssertThrowsError(try tier.put(bigLayer, sync: false)) { error in
            guard case DiskTierError.invalidBlock = error else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(tier.stats.blockCount, 0)
    }

    func testDiskTierKeyEncodingRoundTripsAndSorts() {
        let keys = [
            BlockKey(model: modelA, session: "a", layer: 0, start: 0, count: 1),
            BlockKey(model: modelA, session: "a", layer: 0, start: 256, count: 256),
            BlockKey(model: modelA, session: "a", layer: 1, start: 0, count: 256),
            BlockKey(model: modelA, session: "b", layer: 0, start: 0, count: 256),
            BlockKey(model: modelA, session: "ab", layer: 0, start: 0, count: 256),
            BlockKey(model: modelA, session: "séance ✓", layer: 65535, start: Int(UInt32.max), count: Int(UInt32.max)),
            BlockKey(model: modelB, session: "a", layer: 0, start: 0, count: 1),
        ]
        let encoded = keys.map { DiskRecordFormat.encodeKey($0, prefix: DiskRecordFormat.blockPrefix) }
        for (key, bytes) in zip(keys, encoded) {
            XCTAssertEqual(DiskRecordFormat.decodeKey(bytes, prefix: DiskRecordFormat.blockPrefix), key)
            XCTAssertNil(DiskRecordFormat.decodeKey(bytes, prefix: DiskRecordFormat.indexPrefix))
            XCTAssertNil(DiskRecordFormat.decodeKey(Array(bytes.dropLast()), prefix: DiskRecordFormat.blockPrefix))
            XCTAssertTrue(bytes.starts(with: DiskRecordFormat.prefix(DiskRecordFormat.blockPrefix, model: key.model, session: key.session)))
        }
        // Byte order = (model, session length, session, layer, start, count).
        XCTAssertEqual(encoded, encoded.sorted { $0.lexicographicallyPrecedes($1) })
    }

    // MARK: - Capacity

    func testDiskTierNeverExceedsCapacityAndDeleteFreesBytes() throws {
        var rng = SplitMix64(seed: 7)
        let probe = makeBlock(model: modelA, session: "probe", layer: 0, start: 0, tokens: 100, rng: &rng)
        let probeSize = DiskRecordFormat.encodeValue(probe, shuffle: true).count
        let capacity = probeSize * 5 + probeSize / 2
        let tier = try DiskTier(directory: try temporaryDirectory(), capacityBytes: capacity)

        var stored: [KVBlock] = []
        var rejected: KVBlock?
        for i in 0..<20 {
            let block = makeBlock(model: modelA, session: "s", layer: i, start: 0, tokens: 100, rng: &rng)
            do {
                try tier.put(block, sync: false)
                stored.append(block)
            } catch DiskTierError.full(let requested, let used, let cap) {
                XCTAssertEqual(cap, capacity)
                XCTAssertGreaterThan(requested + used, capacity)
                XCTAssertFalse(tier.contains(block.key), "a rejected block must not be stored")
                rejected = block
                break
            }
            XCTAssertLessThanOrEqual(tier.stats.storedBytes, capacity)
        }
        let full = try XCTUnwrap(rejected, "capacity was never reached")
        XCTAssertEqual(stored.count, 5)
        XCTAssertLessThanOrEqual(tier.stats.storedBytes, capacity)
        let fullError = DiskTierError.full(requestedBytes: 1, storedBytes: 2, capacityBytes: 3)
        XCTAssertTrue(fullError.description.contains("evict"), fullError.description)

        // Delete frees exactly the victim's stored bytes; then the rejected block fits.
        let victim = stored[2].key
        let victimBytes = try XCTUnwrap(tier.storedBytes(of: victim))
        let before = tier.stats.storedBytes
        XCTAssertTrue(try tier.delete(victim))
        XCTAssertFalse(try tier.delete(victim))
        XCTAssertEqual(tier.stats.storedBytes, before - victimBytes)
        XCTAssertEqual(tier.stats.blockCount, 4)
        XCTAssertNil(tier.get(victim).block)
        try tier.put(full, sync: false)
        XCTAssertLessThanOrEqual(tier.stats.storedBytes, capacity)
        assertSameBlock(try XCTUnwrap(tier.get(full.key).block), full)
    }

    /// Eight clients put, get and delete at once; after every operation the capacity holds and
    /// every hit is byte-identical to what was put under that key.
    func testDiskTierCapacityHoldsUnderConcurrentClients() throws {
        var rng = SplitMix64(seed: 99)
        let blocks = (0..<48).map { i in makeBlock(model: modelA, session: "c\(i % 8)", layer: i / 8, start: 0, tokens: 40 + i, rng: &rng) }
        let capacity = blocks.prefix(12).reduce(0) { $0 + DiskRecordFormat.encodeValue($1, shuffle: true).count }
        let tier = try DiskTier(directory: try temporaryDirectory(), capacityBytes: capacity)
        let failures = FailureLog()
        let model = modelA
        onConcurrentThreads(8) { client in
            for round in 0..<3 {
                for j in 0..<6 {
                    let block = blocks[client + 8 * j]
                    do {
                        try tier.put(block, sync: false)
                    } catch DiskTierError.full {
                        // Make room like a store would: drop this client's oldest block.
                        if let victim = tier.keys(model: model, session: block.key.session).first {
                            _ = try? tier.delete(victim)
                        }
                    } catch {
                        failures.add("client \(client): \(error)")
                    }
                    if client == 0 && j % 2 == 0 {
                        // Group commit from a timer: the WAL fsync runs off the disk queue, alongside the others.
                        do { try tier.flush() } catch { failures.add("flush: \(error)") }
                    }
                    let s = tier.stats
                    if s.storedBytes > capacity { failures.add("stored \(s.storedBytes) > capacity \(capacity)") }
                    if s.storedBytes < 0 || s.blockCount < 0 { failures.add("negative accounting \(s)") }
                    let probe = blocks[(client + 8 * ((j + round) % 6))]
                    switch tier.get(probe.key) {
                    case .hit(let read):
                        if read.payload != probe.payload { failures.add("wrong bytes for \(probe.key)") }
                    case .miss: break
                    case .corrupt(let why): failures.add("corrupt \(probe.key): \(why)")
                    }
                }
            }
        }
        XCTAssertEqual(failures.all.count, 0, failures.all.prefix(10).joined(separator: "; "))
        let s = tier.stats
        XCTAssertLessThanOrEqual(s.storedBytes, capacity)
        XCTAssertEqual(s.blockCount, tier.allKeys().count)
        let recomputed = tier.allKeys().reduce(0) { $0 + (tier.storedBytes(of: $1) ?? 0) }
        XCTAssertEqual(s.storedBytes, recomputed)
    }

    // MARK: - Restart

    func testDiskTierRebuildsIndexAfterRestart() throws {
        let dir = try temporaryDirectory()
        var rng = SplitMix64(seed: 3)
        var blocks: [KVBlock] = []
        var statsBefore: DiskTierStats
        do {
            let tier = try DiskTier(directory: dir, capacityBytes: 64 << 20)
            for i in 0..<40 {
                let model = i % 4 == 0 ? modelB : modelA
                let block = makeBlock(model: model, session: "sess-\(i % 3)", layer: i % 30, start: (i / 30) * 256,
                                      tokens: 1 + Int(rng.next() % 300), rng: &rng)
                try tier.put(block, sync: i % 2 == 0)
                blocks.append(block)
            }
            try tier.delete(blocks[5].key)
            blocks.remove(at: 5)
            statsBefore = tier.stats
            try tier.close()
            XCTAssertNil(tier.get(blocks[0].key).block, "a closed tier returns nothing")
            XCTAssertThrowsError(try tier.put(blocks[0], sync: false)) { XCTAssertEqual($0 as? DiskTierError, .closed) }
        }
        let tier = try DiskTier(directory: dir, capacityBytes: 64 << 20)
        let after = tier.stats
        XCTAssertEqual(after.blockCount, blocks.count)
        XCTAssertEqual(after.storedBytes, statsBefore.storedBytes)
        XCTAssertEqual(after.rawBytes, statsBefore.rawBytes)
        XCTAssertEqual(after.corruptBlocks, 0)
        XCTAssertEqual(Set(tier.allKeys()), Set(blocks.map(\.key)))
        XCTAssertEqual(tier.sessions(model: modelA), ["sess-0", "sess-1", "sess-2"])
        for block in blocks {
            guard case .hit(let read) = tier.get(block.key) else { return XCTFail("\(block.key) lost in restart") }
            assertSameBlock(read, block)
        }
        XCTAssertEqual(tier.stats.hits, blocks.count)
        XCTAssertEqual(tier.stats.bytesRead, statsBefore.storedBytes)
    }

    // MARK: - Corruption

    func testDiskTierDetectsFlippedBytesInHeaderAndData() throws {
        let dir = try temporaryDirectory()
        var rng = SplitMix64(seed: 11)
        var blocks: [KVBlock] = []
        do {
            let tier = try DiskTier(directory: dir, capacityBytes: 64 << 20)
            for i in 0..<14 {
                let block = makeBlock(model: modelA, session: "flip", layer: i, start: 0, tokens: 128, rng: &rng)
                try tier.put(block, sync: false)
                blocks.append(block)
            }
            try tier.close()
        }
        // Header fields: version, flags, reserved, row width, token count, raw length, payload CRC,
        // model, data length, header CRC; then LZ4 data: first byte, middle, last.
        let header = DiskRecordFormat.headerSize
        let offsets: [(String, (Int) -> Int)] = [
            ("version", { _ in 0 }), ("flags", { _ in 2 }), ("reserved", { _ in 3 }), ("row width", { _ in 5 }),
            ("token count", { _ in 8 }), ("raw length", { _ in 13 }), ("payload crc", { _ in 17 }),
            ("model", { _ in 26 }), ("header crc", { _ in 34 }), ("lz4 first", { _ in header }),
            ("lz4 middle", { n in header + (n - header) / 2 }),
        ]
        let indexDamaged = blocks[11]
        let untouched = [blocks[12], blocks[13]]
        do {
            let db = try RocksDatabase(path: dir)
            for (block, (what, offset)) in zip(blocks, offsets) {
                let key = DiskRecordFormat.encodeKey(block.key, prefix: DiskRecordFormat.blockPrefix)
                var value = try XCTUnwrap(try db.get(key: key), what)
                let h = try DiskRecordFormat.decodeHeader(value, for: block.key).get()
                XCTAssertTrue(h.compressed && h.shuffled, "block for \(what) should be stored shuffled + LZ4")
                value[offset(value.count)] ^= 0x10
                try db.put(key: key, value: value, sync: false)
            }
            // A damaged index record: found at open, deleted with its block and counted.
            let indexKey = DiskRecordFormat.encodeKey(indexDamaged.key, prefix: DiskRecordFormat.indexPrefix)
            var indexValue = try XCTUnwrap(try db.get(key: indexKey))
            indexValue[2] ^= 1
            try db.put(key: indexKey, value: indexValue, sync: false)
            db.close()
        }
        let tier = try DiskTier(directory: dir, capacityBytes: 64 << 20)
        XCTAssertEqual(tier.stats.corruptBlocks, 1, "the damaged index record")
        XCTAssertFalse(tier.contains(indexDamaged.key))
        XCTAssertEqual(tier.stats.blockCount, 13)
        for (n, (block, (what, _))) in zip(blocks, offsets).enumerated() {
            let storedBefore = tier.stats.storedBytes
            guard case .corrupt(let reason) = tier.get(block.key) else { return XCTFail("flipped \(what) not detected") }
            XCTAssertFalse(reason.isEmpty)
            XCTAssertEqual(tier.stats.corruptBlocks, n + 2, what)
            XCTAssertFalse(tier.contains(block.key), "\(what): corrupt block must be deleted")
            XCTAssertLessThan(tier.stats.storedBytes, storedBefore)
            guard case .miss = tier.get(block.key) else { return XCTFail("\(what): block still readable") }
        }
        // Blocks 0...10 were flipped, 11 lost its index record, 12 and 13 are untouched and intact.
        XCTAssertEqual(offsets.count, 11)
        XCTAssertEqual(tier.stats.blockCount, 2)
        for block in untouched { assertSameBlock(try XCTUnwrap(tier.get(block.key).block), block) }
        XCTAssertEqual(tier.stats.hits, 2)
        XCTAssertEqual(tier.stats.corruptBlocks, 12)

        // A fresh block after all that is stored and read normally.
        let fresh = makeBlock(model: modelA, session: "flip", layer: 0, start: 0, tokens: 128, rng: &rng)
        try tier.put(fresh, sync: false)
        assertSameBlock(try XCTUnwrap(tier.get(fresh.key).block), fresh)
        try tier.close()
        // And the deletions of corrupt blocks are themselves persistent.
        let reopened = try DiskTier(directory: dir, capacityBytes: 64 << 20)
        XCTAssertEqual(Set(reopened.allKeys()), Set([fresh.key] + untouched.map(\.key)))
    }

    func testDiskTierNeverReturnsBlockWhoseHeaderNamesAnotherModel() throws {
        // A block record copied under another model's key (as a confused writer might) is corrupt.
        let dir = try temporaryDirectory()
        var rng = SplitMix64(seed: 5)
        let block = makeBlock(model: modelA, session: "m", layer: 0, start: 0, tokens: 16, rng: &rng)
        var foreign = block.key
        foreign.model = modelB
        do {
            let tier = try DiskTier(directory: dir, capacityBytes: 1 << 24)
            try tier.put(block, sync: false)
            try tier.put(KVBlock(key: foreign, elementType: .f16, rowWidth: block.rowWidth, payload: block.payload), sync: false)
            try tier.close()
            let db = try RocksDatabase(path: dir)
            let value = try XCTUnwrap(try db.get(key: DiskRecordFormat.encodeKey(block.key, prefix: DiskRecordFormat.blockPrefix)))
            try db.put(key: DiskRecordFormat.encodeKey(foreign, prefix: DiskRecordFormat.blockPrefix), value: value, sync: false)
        }
        let tier = try DiskTier(directory: dir, capacityBytes: 1 << 24)
        guard case .corrupt(let why) = tier.get(foreign) else { return XCTFail("foreign block returned") }
        XCTAssertTrue(why.contains("model"), why)
        XCTAssertNotNil(tier.get(block.key).block)
    }

    // MARK: - Directory errors

    func testDiskTierReportsLockedDirectory() throws {
        let dir = try temporaryDirectory()
        let first = try DiskTier(directory: dir, capacityBytes: 1 << 20)
        XCTAssertThrowsError(try DiskTier(directory: dir, capacityBytes: 1 << 20)) { error in
            guard case DiskTierError.locked(let d, let detail) = error else { return XCTFail("not .locked: \(error)") }
            XCTAssertEqual(d, dir)
            XCTAssertFalse(detail.isEmpty)
            XCTAssertTrue("\(error)".contains("another kvtierd is using \(dir)"), "\(error)")
        }
        try first.close()
        let second = try DiskTier(directory: dir, capacityBytes: 1 << 20)
        try second.close()
    }

    func testDiskTierReportsUnwritableDirectory() throws {
        let parent = try temporaryDirectory()
        let file = parent + "/not-a-directory"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        for path in [file + "/sub", file + "/sub/deeper", file] {
            XCTAssertThrowsError(try DiskTier(directory: path, capacityBytes: 1 << 20)) { error in
                guard case DiskTierError.directoryNotWritable(let d, let detail) = error else { return XCTFail("\(path): \(error)") }
                XCTAssertEqual(d, path)
                XCTAssertTrue(detail.contains("is a file"), detail)
                XCTAssertTrue("\(error)".contains("read-only or cannot be created"), "\(error)")
            }
        }
        // RocksDB's own message for the same mistake is classified too (the tier checks first).
        XCTAssertThrowsError(try RocksDatabase(path: file + "/sub")) { error in
            guard case DiskTierError.directoryNotWritable = error else { return XCTFail("RocksDB error not classified: \(error)") }
        }
        // Permission bits only bite for non-root users.
        if getuid() != 0 {
            let readOnly = parent + "/read-only"
            try FileManager.default.createDirectory(atPath: readOnly, withIntermediateDirectories: false)
            XCTAssertEqual(chmod(readOnly, 0o555), 0)
            defer { chmod(readOnly, 0o755) }
            XCTAssertThrowsError(try DiskTier(directory: readOnly, capacityBytes: 1 << 20)) { error in
                guard case DiskTierError.directoryNotWritable = error else { return XCTFail("\(error)") }
            }
        }
        // Classification of RocksDB messages.
        XCTAssertEqual(RocksDatabase.classify("IO error: While lock file: /s/LOCK: Resource temporarily unavailable", operation: "open", path: "/s"),
                       .locked(directory: "/s", detail: "IO error: While lock file: /s/LOCK: Resource temporarily unavailable"))
        if case .directoryNotWritable = RocksDatabase.classify("IO error: While open a file for appending: /s/LOG: Read-only file system", operation: "open", path: "/s") {
        } else { XCTFail("read-only file system not classified") }
        if case .damaged = RocksDatabase.classify("Corruption: block checksum mismatch", operation: "get", path: "/s") {
        } else { XCTFail("corruption not classified") }
        XCTAssertTrue(DiskTierError.damaged(directory: "/s", detail: "x").description.hasPrefix("database is damaged: x"))
    }

    // MARK: - Async API

    func testDiskTierAsyncPutAndGetMayReenter() throws {
        let tier = try DiskTier(directory: try temporaryDirectory(), capacityBytes: 1 << 24)
        var rng = SplitMix64(seed: 21)
        let block = makeBlock(model: modelA, session: "async", layer: 3, start: 0, tokens: 33, rng: &rng)
        let put = expectation(description: "put")
        tier.putAsync(block, sync: true) { result in
            if case .failure(let e) = result { XCTFail("\(e)") }
            XCTAssertTrue(tier.contains(block.key), "a sync call from the completion must not deadlock")
            put.fulfill()
        }
        wait(for: [put], timeout: 30)
        let got = expectation(description: "get")
        let expected = block.payload
        tier.getAsync(block.key) { result in
            XCTAssertEqual(result.block?.payload, expected)
            XCTAssertEqual(tier.stats.hits, 1)
            got.fulfill()
        }
        wait(for: [got], timeout: 30)
        let full = expectation(description: "full")
        let small = try DiskTier(directory: try temporaryDirectory(), capacityBytes: 100)
        small.putAsync(block, sync: false) { result in
            guard case .failure(.full) = result else { return XCTFail("expected .full, got \(result)") }
            full.fulfill()
        }
        wait(for: [full], timeout: 30)
    }

    // MARK: - Compression

    func testDiskTierMeasuresCompressionWithAndWithoutShuffle() {
        let payloads = (0..<4).map { SyntheticKVBlocks.block(index: $0, tokens: 256).payload }
        let ratios = DiskTier.measureCompression(payloads: payloads)
        print("synthetic KV compression ratio: shuffled \(ratios.shuffled), plain \(ratios.plain)")
        XCTAssertGreaterThan(ratios.shuffled, ratios.plain)
        XCTAssertGreaterThan(ratios.shuffled, 1.2)
        XCTAssertEqual(DiskTier.measureCompression(payloads: []).shuffled, 1)
    }

    // MARK: - Durability

    func testDiskTierKeepsEveryAckedBlockAfterKill9WithSync() throws {
        try killWriterAndVerify(sync: true)
    }

    func testDiskTierKeepsEveryAckedBlockAfterKill9WithoutSync() throws {
        try killWriterAndVerify(sync: false)
    }

    /// Measures what a put of a 1 MB block costs with and without an fsync of the WAL: through
    /// RocksDB alone (the same encoded value; this isolates the fsync) and through the tier
    /// (encoding included, which in a debug build dominates), plus the group-commit alternative
    /// (unsynced puts, then one `flush()`). Prints medians of 3 rounds; asserts only that
    /// everything was written.
    func testDiskTierDurabilityCostPerMegabyteBlock() throws {
        let dir = try temporaryDirectory()
        let tokens = (1 << 20) / (2 * SyntheticKVBlocks.rowWidth * 2)  // 1365 tokens: 1,048,320 bytes
        let samples = (0..<3).map { SyntheticKVBlocks.block(index: $0, tokens: tokens) }
        let n = 16
        let rounds = 3
        func block(_ i: Int, _ tag: String) -> KVBlock {
            let s = samples[i % samples.count]
            return KVBlock(key: BlockKey(model: modelA, session: tag, layer: i, start: 0, count: tokens),
                           elementType: .f16, rowWidth: s.rowWidth, payload: s.payload)
        }
        func ms(_ body: () throws -> Void) rethrows -> Double {
            let t0 = Date()
            try body()
            return Date().timeIntervalSince(t0) * 1000
        }
        func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
        let value = DiskRecordFormat.encodeValue(samples[0], shuffle: true)

        // RocksDB alone.
        var rawNoSync: [Double] = []
        var rawSync: [Double] = []
        var rawGroup: [Double] = []
        do {
            let db = try RocksDatabase(path: dir)
            try db.put(key: Array("warm".utf8), value: value, sync: true)
            for r in 0..<rounds {
                rawNoSync.append(try ms { for i in 0..<n { try db.put(key: Array("a\(r)-\(i)".utf8), value: value, sync: false) } } / Double(n))
                rawSync.append(try ms { for i in 0..<n { try db.put(key: Array("b\(r)-\(i)".utf8), value: value, sync: true) } } / Double(n))
                rawGroup.append(try ms {
                    for i in 0..<n { try db.put(key: Array("c\(r)-\(i)".utf8), value: value, sync: false) }
                    try db.flushWAL(sync: true)
                } / Double(n))
            }
            db.close()
        }

        // Through the tier.
        let tier = try DiskTier(directory: dir, capacityBytes: 1 << 34)
        var tierNoSync: [Double] = []
        var tierSync: [Double] = []
        var flushes: [Double] = []
        for r in 0..<rounds {
            let a = (0..<n).map { block($0, "a\(r)") }
            let b = (0..<n).map { block($0, "b\(r)") }
            tierNoSync.append(try ms { for x in a { try tier.put(x, sync: false) } } / Double(n))
            flushes.append(try ms { try tier.flush() })
            tierSync.append(try ms { for x in b { try tier.put(x, sync: true) } } / Double(n))
        }
        let encode = ms { for i in 0..<n { _ = DiskRecordFormat.encodeValue(block(i, "enc"), shuffle: true) } } / Double(n)
        XCTAssertEqual(tier.stats.blockCount, 2 * rounds * n)
        try tier.close()

        print(String(format: "1 MB block put (%d bytes raw, %d stored), medians of %d rounds x %d puts:\n"
                     + "  RocksDB put alone: sync=false %.2f ms, sync=true %.2f ms, sync=false + one flush per %d puts %.2f ms/put\n"
                     + "  DiskTier.put (debug build): sync=false %.2f ms, sync=true %.2f ms, encode alone %.2f ms; flush() after %d unsynced puts %.2f ms",
                     samples[0].payload.count, value.count, rounds, n,
                     median(rawNoSync), median(rawSync), n, median(rawGroup),
                     median(tierNoSync), median(tierSync), encode, n, median(flushes)))
    }

    // MARK: - Helpers

    private func killWriterAndVerify(sync: Bool) throws {
        let binary = try XCTUnwrap(kvtierctlURL(), "kvtierctl not found next to the test bundle (build with --build-tests)")
        let dir = try temporaryDirectory()
        let process = Process()
        process.executableURL = binary
        process.arguments = ["debug", "disk-writer", "--dir", dir, "--blocks", "100000"] + (sync ? ["--sync"] : [])
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        let pid = process.processIdentifier
        let watchdog = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + 180, execute: watchdog)

        var text = ""
        var acked: [Int] = []
        let reader = stdout.fileHandleForReading
        while acked.count < 20 {
            let data = reader.availableData
            if data.isEmpty { break }  // EOF: the writer exited (or the watchdog killed it)
            text += String(decoding: data, as: UTF8.self)
            acked = parseAcks(text)
        }
        XCTAssertEqual(kill(pid, SIGKILL), 0, "the writer should still be running when killed")
        process.waitUntilExit()
        watchdog.cancel()
        text += String(decoding: reader.readDataToEndOfFile(), as: UTF8.self)
        acked = parseAcks(text)
        let errors = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(process.terminationReason, .uncaughtSignal, "writer exited by itself: \(errors)")
        XCTAssertGreaterThanOrEqual(acked.count, 20, "writer acked only \(acked.count) blocks; stderr: \(errors)")
        XCTAssertEqual(acked, Array(0..<acked.count), "acks must come in order")

        let tier = try DiskTier(directory: dir, capacityBytes: 1 << 40)
        XCTAssertEqual(tier.stats.corruptBlocks, 0)
        for i in acked {
            let expected = SyntheticKVBlocks.block(index: i)
            guard case .hit(let read) = tier.get(expected.key) else { return XCTFail("acked block \(i) lost (sync: \(sync))") }
            assertSameBlock(read, expected)
        }
        // Blocks written but not yet acked may or may not be there; if there, they are intact.
        for key in tier.allKeys() {
            switch tier.get(key) {
            case .hit(let read):
                let i = try XCTUnwrap(indexOfSyntheticBlock(key))
                assertSameBlock(read, SyntheticKVBlocks.block(index: i))
            case .miss: XCTFail("indexed block \(key) missing")
            case .corrupt(let why): XCTFail("corrupt block returned after kill: \(why)")
            }
        }
        XCTAssertEqual(tier.stats.corruptBlocks, 0)
        XCTAssertLessThanOrEqual(tier.stats.blockCount, acked.count + 1, "at most the block in flight is extra")
        print("kill -9 (sync: \(sync), \(binary.path)): \(acked.count) acked, \(tier.stats.blockCount) on disk after reopen, all intact")
    }

    private func parseAcks(_ text: String) -> [Int] {
        text.split(separator: "\n").compactMap { line in
            line.hasPrefix("acked ") ? Int(line.dropFirst(6)) : nil
        }
    }

    private func indexOfSyntheticBlock(_ key: BlockKey) -> Int? {
        guard key.model == SyntheticKVBlocks.model, key.session == SyntheticKVBlocks.session else { return nil }
        return (key.start / 512) * SyntheticKVBlocks.layers + key.layer
    }

    /// `kvtierctl` in the build products directory that holds this test bundle, else in the
    /// package's `.build-disk/debug` or `.build/debug`.
    private func kvtierctlURL() -> URL? {
        var candidates: [URL] = []
        for bundle in [Bundle.main] + Bundle.allBundles + [Bundle(for: DiskTierTests.self)] {
            candidates.append(bundle.bundleURL)
            candidates.append(bundle.bundleURL.deletingLastPathComponent())
        }
        candidates.append(URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent())
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        candidates.append(packageRoot.appendingPathComponent(".build-disk/debug"))
        candidates.append(packageRoot.appendingPathComponent(".build/debug"))
        for dir in candidates {
            let url = dir.appendingPathComponent("kvtierctl")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return nil
    }

    private func makeBlock(model: ModelFingerprint, session: String, layer: Int, start: Int, tokens: Int,
                           type: KVElementType = .f16, rng: inout SplitMix64) -> KVBlock {
        let key = BlockKey(model: model, session: session, layer: layer, start: start, count: tokens)
        return KVBlock(key: key, elementType: type, rowWidth: 192,
                       payload: SyntheticKVBlocks.payload(tokens: tokens, rowWidth: 192, elementType: type, rng: &rng))
    }

    private func assertSameBlock(_ a: KVBlock, _ b: KVBlock, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.key, b.key, file: file, line: line)
        XCTAssertEqual(a.elementType, b.elementType, file: file, line: line)
        XCTAssertEqual(a.rowWidth, b.rowWidth, file: file, line: line)
        XCTAssertEqual(a.checksum, b.checksum, file: file, line: line)
        XCTAssertTrue(a.payload == b.payload, "payload differs for \(a.key)", file: file, line: line)
    }

    private func temporaryDirectory() throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-disk-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url.path
    }
}

/// Failures collected from concurrent clients, asserted on the test's thread.
private final class FailureLog: @unchecked Sendable {
    private let lock = NSLock()
    private var failures: [String] = []

    func add(_ message: String) {
        lock.lock()
        failures.append(message)
        lock.unlock()
    }

    var all: [String] {
        lock.lock()
        defer { lock.unlock() }
        return failures
    }
}
