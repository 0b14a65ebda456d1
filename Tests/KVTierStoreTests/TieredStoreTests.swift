import Foundation
import KVTierModel
import XCTest

@testable import KVTierStore

final class TieredStoreTests: XCTestCase {
    let model = ModelFingerprint(value: 0xABCD)
    let shape = KVShape(layers: 3, rowWidth: 3 * 64)

    private func tempDir() -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-store-\(UUID().uuidString)").path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    private func config(_ dir: String, blockTokens: Int = 16) -> StoreConfiguration {
        var c = StoreConfiguration(stateDirectory: dir)
        c.blockTokens = blockTokens
        c.hbmCapacityBytes = 64 << 20
        c.dramCapacityBytes = 64 << 20
        c.diskCapacityBytes = 256 << 20
        c.link = .init(bandwidthBytesPerSecond: 0, latencySeconds: 0)
        return c
    }

    /// Deterministic F16-looking payload for a key; `smooth` makes it compressible like real KV.
    private func block(_ session: String, layer: Int, start: Int, count: Int = 16, smooth: Bool = false) -> KVBlock {
        let key = BlockKey(model: model, session: session, layer: layer, start: start, count: count)
        var bytes = [UInt8](repeating: 0, count: 2 * count * shape.rowWidth * 2)
        var h = UInt64(truncatingIfNeeded: session.hashValue) &+ UInt64(layer * 1000 + start)
        for i in stride(from: 0, to: bytes.count, by: 2) {
            h = h &* 6_364_136_223_846_793_005 &+ 1
            let v = smooth ? Float16(Float(i % 64) / 64) : Float16(Float(Int(h >> 48) % 2000 - 1000) / 500)
            bytes[i] = UInt8(v.bitPattern & 0xff)
            bytes[i + 1] = UInt8(v.bitPattern >> 8)
        }
        return KVBlock(key: key, elementType: .f16, rowWidth: shape.rowWidth, payload: bytes)
    }

    private func sessionBlocks(_ s: String, blocks: Int = 2, smooth: Bool = false) -> [KVBlock] {
        (0..<shape.layers).flatMap { l in (0..<blocks).map { block(s, layer: l, start: $0 * 16, smooth: smooth) } }
    }

    private func assertLoaded(
        _ store: TieredStore, _ handle: LoadHandle, equal blocks: [KVBlock], file: StaticString = #filePath,
        line: UInt = #line
    ) {
        for l in handle.layers {
            let load = handle.wait(layer: l)
            XCTAssertTrue(load.missing.isEmpty, "layer \(l) missing \(load.missing)", file: file, line: line)
            let expected = blocks.filter { $0.key.layer == l }.sorted { $0.key.start < $1.key.start }
            XCTAssertEqual(load.pages.map(\.key), expected.map(\.key), file: file, line: line)
            for (p, b) in zip(load.pages, expected) {
                XCTAssertTrue(
                    store.payload(inPage: p.page, rows: p.key.count) == b.payload,
                    "layer \(l) block \(b.key) differs", file: file, line: line)
            }
        }
    }

    /// Prefetches run on their own queue and step aside for loads: a turn's load issued behind
    /// eight sessions' prefetches from disk is delivered before they finish (on one shared queue,
    /// it would wait for all of them).
    /// A block saved as it fills: each partial save copies only the rows after the one before
    /// and leaves one copy in DRAM (the earlier one forgotten); the complete block, adopted in
    /// the page the rows were written in, extends the last partial copy the same way.
    func testPartialSavesExtendEachOtherAndTheCompleteBlockExtendsThem() throws {
        let store = try TieredStore(configuration: config(tempDir()), model: model, shape: shape)
        let full = block("s", layer: 1, start: 32)
        let rb = shape.rowWidth * 2
        let page = try store.reservePage(for: "s")
        let base = store.pageBytes(page)
        // The decoder's layout while the block fills: keys from 0, values after room for 16 rows.
        func write(rows: Range<Int>) {
            full.payload.withUnsafeBytes { p in
                (base + rows.lowerBound * rb).copyMemory(
                    from: p.baseAddress! + rows.lowerBound * rb, byteCount: rows.count * rb)
                (base + 16 * rb + rows.lowerBound * rb).copyMemory(
                    from: p.baseAddress! + (16 + rows.lowerBound) * rb, byteCount: rows.count * rb)
            }
        }
        func key(_ n: Int) -> BlockKey { BlockKey(model: model, session: "s", layer: 1, start: 32, count: n) }
        func expected(_ n: Int) -> [UInt8] {
            Array(full.payload[0..<(n * rb)]) + Array(full.payload[(16 * rb)..<((16 + n) * rb)])
        }
        let copied0 = store.copyEngine.counters.bytes
        write(rows: 0..<5)
        store.savePartials([(page, key(5), nil)]) {}
        write(rows: 5..<9)
        store.savePartials([(page, key(9), key(5))]) {}
        store.waitForSaves()
        XCTAssertEqual(store.copyEngine.counters.bytes - copied0, 2 * 9 * rb, "each row crossed the link once")
        XCTAssertNil(store.dram.get(key(5)), "the earlier partial copy is forgotten")
        XCTAssertEqual(store.dram.get(key(9))?.payload, expected(9))
        write(rows: 9..<16)
        try store.adopt(page, as: full.key)
        store.unpin([full.key])
        XCTAssertEqual(store.save(full.key, extending: key(9)).wait(), .inDRAM)
        XCTAssertEqual(
            store.copyEngine.counters.bytes - copied0, 2 * 16 * rb, "the complete block copied its last rows")
        XCTAssertNil(store.dram.get(key(9)))
        XCTAssertEqual(store.dram.get(full.key)?.payload, full.payload, "DRAM holds the whole block")
        // With the partial copy gone, the block stays in HBM, and an eviction copies it down whole.
        let other = block("s", layer: 2, start: 32)
        let page2 = try store.reservePage(for: "s")
        other.payload.withUnsafeBytes { store.pageBytes(page2).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        try store.adopt(page2, as: other.key)
        store.unpin([other.key])
        XCTAssertEqual(store.save(other.key, extending: key(3)).wait(), .inHBM)
        try store.demote(session: "s", to: .dram)
        XCTAssertEqual(store.dram.get(other.key)?.payload, other.payload)
    }

    func testALoadIsNotQueuedBehindPrefetches() throws {
        var c = config(tempDir(), blockTokens: 256)
        c.dramCapacityBytes = 256 << 20
        let store = try TieredStore(configuration: c, model: model, shape: shape)
        let sessions = (0..<8).map { "later-\($0)" } + ["now"]
        for s in sessions {
            for l in 0..<shape.layers {
                for i in 0..<4 {
                    let b = block(s, layer: l, start: i * 256, count: 256, smooth: true)
                    try store.admit(b)
                    store.save(b.key)
                }
            }
            store.waitForSaves()
            try store.demote(session: s, to: .disk)
        }
        let log = OrderLog()
        for s in sessions.dropLast() { store.prefetch(session: s) { log.append(s) } }
        let handle = store.load(session: "now")
        for l in 0..<shape.layers { XCTAssertTrue(handle.wait(layer: l).missing.isEmpty) }
        log.append("now loaded")
        handle.release()
        let deadline = Date().addingTimeInterval(30)
        while log.entries.count < sessions.count && Date() < deadline { usleep(10_000) }
        XCTAssertEqual(log.entries.count, sessions.count)
        XCTAssertNotEqual(log.entries.last, "now loaded", "the load waited for every prefetch: \(log.entries)")
    }

    func testRoundTripThroughEveryTierAndPath() throws {
        let store = try TieredStore(configuration: config(tempDir()), model: model, shape: shape)
        let blocks = sessionBlocks("a")
        for b in blocks { try store.admit(b) }
        // HBM -> DRAM (keep in DRAM)
        for b in blocks { XCTAssertEqual(store.save(b.key).wait(), .inDRAM) }
        try store.demote(session: "a", to: .dram)
        XCTAssertFalse(store.isInHBM(blocks[0].key))
        var h = store.load(session: "a")
        assertLoaded(store, h, equal: blocks)
        XCTAssertEqual(h.wait(layer: 0).fromDRAM, 2)
        h.release()
        // DRAM -> disk, then disk -> DRAM -> HBM
        try store.demote(session: "a", to: .disk)
        XCTAssertEqual(store.placement(session: "a").layers[1].map(\.tiers), [[.disk], [.disk]])
        h = store.load(session: "a")
        assertLoaded(store, h, equal: blocks)
        XCTAssertEqual(h.wait(layer: 2).fromDisk, 2)
        h.release()
        // Already in HBM: served from there.
        h = store.load(session: "a")
        XCTAssertEqual(h.wait(layer: 1).fromHBM, 2)
        h.release()
        // Write-through goes to disk at once.
        let other = sessionBlocks("b")
        for b in other { try store.admit(b) }
        for b in other { XCTAssertEqual(store.save(b.key, placement: .writeThrough).wait(), .onDisk) }
        XCTAssertTrue(store.disk.contains(other[0].key))
        let s = store.stats
        XCTAssertGreaterThan(s.hbm.promotions, 0)
        XCTAssertGreaterThan(s.dram.demotions, 0)
        XCTAssertGreaterThan(s.disk.bytesIn, 0)
    }

    func testLayersArriveInOrderAndWhole() throws {
        var c = config(tempDir())
        c.link = .init(bandwidthBytesPerSecond: 200e6, latencySeconds: 1e-4)  // slow link: layers trickle in
        let store = try TieredStore(configuration: c, model: model, shape: shape)
        let blocks = sessionBlocks("slow", blocks: 4)
        for b in blocks { try store.admit(b) }
        for b in blocks { _ = store.save(b.key, placement: .writeThrough) }
        store.waitForSaves()
        try store.demote(session: "slow", to: .disk)
        let h = store.load(session: "slow")
        for l in h.layers {
            _ = h.wait(layer: l)
            // Whenever layer l is ready, every earlier layer is too.
            for e in 0..<l { XCTAssertTrue(h.isReady(layer: e)) }
        }
        assertLoaded(store, h, equal: blocks)
        h.release()
    }

    /// Two sessions sharing a block load it at once (a fork and its source): both get the page
    /// that arrived first and it stays allocated; the second copy is freed, not the first.
    func testTwoLoadsOfOneBlockShareThePageThatArrivedFirst() throws {
        var c = config(tempDir())
        c.link = .init(bandwidthBytesPerSecond: 200e6, latencySeconds: 5e-3)  // both loads start before either lands
        let store = try TieredStore(configuration: c, model: model, shape: shape)
        let blocks = sessionBlocks("shared", blocks: 1)
        for b in blocks { try store.admit(b) }
        for b in blocks { _ = store.save(b.key, placement: .writeThrough) }
        store.waitForSaves()
        try store.demote(session: "shared", to: .dram)
        let first = store.load(session: "shared")
        let second = store.load(session: "shared")
        for l in 0..<shape.layers {
            let a = first.wait(layer: l).pages
            let b = second.wait(layer: l).pages
            XCTAssertEqual(a.map(\.page), b.map(\.page), "layer \(l): one page serves both loads")
            for p in a {
                XCTAssertTrue(
                    store.arena.isAllocated(p.page), "layer \(l): the page handed out first is still allocated")
            }
        }
        assertLoaded(store, first, equal: blocks)
        first.release()
        second.release()
        XCTAssertEqual(store.arena.usedPages, shape.layers, "no page leaked by the second copy")
    }

    /// A block whose bytes were damaged in (compressed) DRAM fails its checksum on the way up:
    /// it is reported missing for the caller to recompute, never handed out.
    func testDamagedBlocksAreReportedMissingNotReturned() throws {
        var c = config(tempDir())
        c.compressDRAM = true
        let store = try TieredStore(configuration: c, model: model, shape: shape)
        let blocks = sessionBlocks("m", smooth: true)
        for b in blocks { try store.admit(b) }
        for b in blocks { XCTAssertEqual(store.save(b.key).wait(), .inDRAM) }
        try store.demote(session: "m", to: .dram)
        XCTAssertTrue(store.dram.damageStoredBytes(of: blocks[2].key, at: 5))
        let h = store.load(session: "m")
        let l1 = h.wait(layer: 1)
        XCTAssertEqual(l1.missing, [blocks[2].key])
        XCTAssertEqual(l1.pages.map(\.key), [blocks[3].key])
        XCTAssertTrue(store.payload(inPage: l1.pages[0].page, rows: l1.pages[0].key.count) == blocks[3].payload)
        h.release()
        XCTAssertGreaterThan(store.stats.hbm.misses, 0)
        XCTAssertGreaterThan(store.stats.dram.checksumFailures, 0)
        // Blocks of another model are refused at the door.
        let foreignKey = BlockKey(model: ModelFingerprint(value: 1), session: "x", layer: 0, start: 0, count: 16)
        XCTAssertThrowsError(
            try store.admit(
                KVBlock(key: foreignKey, elementType: .f16, rowWidth: shape.rowWidth, payload: blocks[0].payload)))
    }

    func testRestartFindsTheDiskTier() throws {
        let dir = tempDir()
        let blocks = sessionBlocks("persist")
        do {
            let store = try TieredStore(configuration: config(dir), model: model, shape: shape)
            for b in blocks { try store.admit(b) }
            for b in blocks { _ = store.save(b.key).wait() }
            try store.close()
        }
        let reopened = try TieredStore(configuration: config(dir), model: model, shape: shape)
        XCTAssertEqual(reopened.sessions, ["persist"])
        let h = reopened.load(session: "persist")
        assertLoaded(reopened, h, equal: blocks)
        XCTAssertEqual(h.wait(layer: 0).fromDisk, 2)
        h.release()
        // Another model's store sees nothing.
        try reopened.close()
        let foreign = try TieredStore(configuration: config(dir), model: ModelFingerprint(value: 7), shape: shape)
        XCTAssertTrue(foreign.blockKeys(session: "persist").isEmpty)
    }

    /// F16 blocks on disk, reopened by a store of F32 KV (`kv_precision` changed): every block is
    /// a miss, none is copied into an F32 page.
    func testBlocksOfAnotherKVPrecisionAreMisses() throws {
        let dir = tempDir()
        let blocks = sessionBlocks("narrow")
        do {
            let store = try TieredStore(configuration: config(dir), model: model, shape: shape)
            for b in blocks { try store.admit(b) }
            for b in blocks { _ = store.save(b.key).wait() }
            try store.close()
        }
        let wide = try TieredStore(configuration: config(dir), model: model, shape: shape, elementType: .f32)
        let h = wide.load(session: "narrow")
        for l in h.layers {
            let load = h.wait(layer: l)
            XCTAssertTrue(load.pages.isEmpty, "layer \(l): an F16 block was placed in an F32 page")
            XCTAssertEqual(load.missing.count, 2)
        }
        h.release()
        try wide.close()
    }

    /// A store whose DRAM is just full with `sessions` (two blocks in every layer each), saved in
    /// that order.
    private func storeWithDRAMFull(of sessions: [String], policy: StoreConfiguration.PolicyKind) throws -> TieredStore {
        var c = config(tempDir())
        c.dramCapacityBytes = sessions.count * 6 * 2 * 16 * shape.rowWidth * 2
        c.policy = policy
        let store = try TieredStore(configuration: c, model: model, shape: shape)
        for s in sessions {
            for b in sessionBlocks(s) {
                try store.admit(b)
                _ = store.save(b.key).wait()
            }
        }
        return store
    }

    /// Scripted queue: sessions A, B, C fill DRAM, used in that order; the scheduler says A runs
    /// next. Saving D must push one session to disk: LRU picks A (least recent), the hint-driven
    /// policy spares A and picks B.
    func testHintDrivenEvictionSparesTheUpcomingSession() throws {
        for kind in [StoreConfiguration.PolicyKind.lru, .hintDriven] {
            let store = try storeWithDRAMFull(of: ["A", "B", "C"], policy: kind)
            store.setUpcoming(["A"])
            for b in sessionBlocks("D") {
                try store.admit(b)
                _ = store.save(b.key).wait()
            }
            let inDRAM = Set(store.dram.sessions)
            if kind == .lru {
                XCTAssertFalse(inDRAM.contains("A"), "LRU evicts the least recently used session")
            } else {
                XCTAssertTrue(inDRAM.contains("A"), "hint-driven eviction spares the upcoming session")
                XCTAssertFalse(inDRAM.contains("B"))
            }
            XCTAssertTrue(store.disk.sessions(model: model).count >= 1, "the victim was demoted, not dropped")
        }
    }

    /// Queued chats A, B, C fill DRAM and D's turn runs: D's next turn comes after theirs, so
    /// the hint-driven policy sends D's saved blocks to disk rather than push C (the one needed
    /// last) out; once C is no longer queued, it gives way to D. LRU evicts as before.
    func testASaveNeededAfterTheQueuedChatsGoesToDiskNotOverThem() throws {
        for kind in [StoreConfiguration.PolicyKind.lru, .hintDriven] {
            let store = try storeWithDRAMFull(of: ["A", "B", "C"], policy: kind)
            store.setUpcoming(["A", "B", "C"], running: ["D"])
            let saved = sessionBlocks("D")
            var outcomes: [SaveTicket.Outcome] = []
            for b in saved {
                try store.admit(b)
                outcomes.append(store.save(b.key).wait())
            }
            let inDRAM = Set(store.dram.sessions)
            if kind == .lru {
                XCTAssertEqual(inDRAM, ["B", "C", "D"], "LRU evicts the least recently used session")
                continue
            }
            XCTAssertEqual(inDRAM, ["A", "B", "C"], "the queued chats stay in DRAM")
            XCTAssertEqual(outcomes, Array(repeating: .onDisk, count: saved.count))
            XCTAssertTrue(saved.allSatisfy { store.disk.contains($0.key) }, "every block of D is on disk")
            // C leaves the queue: it gives way to D's next save.
            store.setUpcoming(["A", "B"], running: ["D"])
            let again = block("D", layer: 0, start: 32)
            try store.admit(again)
            XCTAssertEqual(store.save(again.key).wait(), .inDRAM)
            XCTAssertEqual(Set(store.dram.sessions), ["A", "B", "D"], "C, no longer queued, was demoted for D")
        }
    }

    /// A block a queued chat reads from another chat's namespace (the prefix they share, stored
    /// once) ranks with the queued chat, not with the idle chat whose namespace holds it: when a
    /// running chat's save needs room, the idle chat's own history goes to disk and the shared
    /// block stays in DRAM. LRU, which does not look ahead, evicts the idle chat whole.
    func testABorrowedBlockStaysWithTheQueuedChatThatReadsIt() throws {
        for kind in [StoreConfiguration.PolicyKind.lru, .hintDriven] {
            let store = try storeWithDRAMFull(of: ["A", "B", "C"], policy: kind)
            store.setUpcoming(["Q"], running: ["D"], borrowed: ["Q": [BlockSpan(session: "A", start: 0, count: 16)]])
            for b in sessionBlocks("D") {
                try store.admit(b)
                _ = store.save(b.key).wait()
            }
            let kept = store.dram.keys(session: "A")
            if kind == .lru {
                XCTAssertEqual(kept, [], "LRU evicts the least recently used chat whole")
                continue
            }
            XCTAssertEqual(Set(kept.map(\.start)), [0], "A's own history went, the block Q reads stayed")
            XCTAssertEqual(kept.count, shape.layers, "in every layer")
            XCTAssertTrue(store.disk.contains(block("A", layer: 0, start: 16).key), "A's own block is on disk")
            XCTAssertEqual(Set(store.dram.sessions), ["A", "C", "D"], "then B, the next least recent, went")
        }
    }

    /// Under LRU an entering block always gets in (a classic LRU cache): an old chat's prefetch
    /// (LMCache's prefetch on arrival) pushes out the least recently used chat rather than find
    /// no room, however long ago the prefetched chat was used.
    func testAPrefetchUnderLRUTakesTheRoomOfTheLeastRecentlyUsedChat() throws {
        var c = config(tempDir())
        let perSession = 6 * 2 * 16 * shape.rowWidth * 2
        c.dramCapacityBytes = 2 * perSession
        c.policy = .lru
        let store = try TieredStore(configuration: c, model: model, shape: shape)
        for s in ["old", "A", "B"] {
            for b in sessionBlocks(s) {
                try store.admit(b)
                _ = store.save(b.key).wait()
            }
            if s == "old" { try store.demote(session: s, to: .disk) }
        }
        XCTAssertEqual(Set(store.dram.sessions), ["A", "B"])
        let done = DispatchSemaphore(value: 0)
        store.prefetch(session: "old") { done.signal() }
        done.wait()
        XCTAssertEqual(Set(store.dram.sessions), ["old", "B"], "A, the least recently used, gave way")
        XCTAssertEqual(store.dram.keys(session: "old").count, sessionBlocks("old").count)
    }

    /// 8 concurrent clients admit, save, load and demote their sessions through tiers far too
    /// small for all of them; after every operation no tier exceeds its capacity and every load
    /// returns intact data.
    func testCapacityNeverExceededUnderConcurrentClients() throws {
        var c = config(tempDir())
        let pageBytes = 2 * 16 * shape.rowWidth * 2
        c.hbmCapacityBytes = 20 * pageBytes
        c.dramCapacityBytes = 14 * pageBytes
        c.diskCapacityBytes = 64 << 20
        c.maxSavesInFlight = 4
        let store = try TieredStore(configuration: c, model: model, shape: shape)
        let limits = c
        let failures = Counter()
        let wrongData = Counter()
        let allBlocks = (0..<8).map { sessionBlocks("client\($0)") }
        @Sendable func check() {
            let s = store.stats
            if s.hbm.usedBytes > limits.hbmCapacityBytes || s.dram.usedBytes > limits.dramCapacityBytes
                || s.disk.usedBytes > limits.diskCapacityBytes
            {
                failures.add(1)
            }
        }
        onConcurrentThreads(8) { client in
            let session = "client\(client)"
            let blocks = allBlocks[client]
            for round in 0..<6 {
                for b in blocks {
                    do { try store.admit(b) } catch { continue }  // HBM full of pinned sessions: fine, try later
                    check()
                    _ = store.save(b.key, placement: round % 2 == 0 ? .keepInDRAM : .writeThrough).wait()
                    check()
                }
                let h = store.load(session: session)
                for l in h.layers {
                    let load = h.wait(layer: l)
                    for p in load.pages {
                        guard let expected = blocks.first(where: { $0.key == p.key }) else { continue }
                        if store.payload(inPage: p.page, rows: p.key.count) != expected.payload {
                            wrongData.add(1)
                        }
                    }
                }
                h.release()
                check()
                if round % 3 == 2 { try? store.demote(session: session, to: .disk) }
                check()
            }
        }
        XCTAssertEqual(failures.value, 0, "capacity exceeded")
        XCTAssertEqual(wrongData.value, 0, "a load returned other bytes than were saved")
        let s = store.stats
        XCTAssertLessThanOrEqual(s.hbm.usedBytes, c.hbmCapacityBytes)
        XCTAssertLessThanOrEqual(s.dram.usedBytes, c.dramCapacityBytes)
    }

    /// With the disk tier degraded (another process holds the directory), saves still succeed
    /// into DRAM, DRAM evictions drop instead of failing, and when the tier comes back a block
    /// replaced meanwhile is not served from its stale disk copy.
    func testSave_whenDiskTierDegraded_keepsServingFromMemoryAndNeverRevivesAReplacedBlock() throws {
        let dir = tempDir()
        let holder = try DiskTier(directory: dir, capacityBytes: 1 << 30)
        let stale = block("a", layer: 0, start: 0, smooth: true)
        try holder.put(stale, sync: false)
        var c = config(dir)
        c.dramCapacityBytes = 100 << 10  // one session of 3 layers x 2 blocks x 12 KiB
        c.diskRecovery = DiskTierRecovery(
            degradeOnOpenFailure: true, quarantineDamaged: true, retryIntervalSeconds: 0.1)
        let store = try TieredStore(configuration: c, model: model, shape: shape)
        XCTAssertEqual(store.stats.disk.health?.state, .degraded)
        var tickets: [SaveTicket] = []
        for s in ["a", "b", "c"] {
            for b in sessionBlocks(s) {
                try store.admit(b)
                tickets.append(store.save(b.key))
            }
        }
        for t in tickets { XCTAssertEqual(t.wait(), .inDRAM, "save of \(t.key) with the disk degraded") }
        XCTAssertGreaterThan(store.stats.dram.evictions, 0, "DRAM made room by dropping")
        XCTAssertGreaterThan(store.stats.disk.health?.writeErrors ?? 0, 0)
        let handle = store.load(session: "c")
        assertLoaded(store, handle, equal: sessionBlocks("c"))
        handle.release()

        try holder.close()
        let deadline = Date().addingTimeInterval(5)
        while !store.disk.isHealthy && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        XCTAssertTrue(store.disk.isHealthy, store.disk.health.summary)
        XCTAssertFalse(store.disk.contains(stale.key), "the copy replaced while degraded is deleted at the reopen")
        try store.demote(session: "a", to: .disk)
        let fromDisk = store.load(session: "a")
        assertLoaded(store, fromDisk, equal: sessionBlocks("a"))
        fromDisk.release()
        try store.close()
    }
}

/// Events in the order they happened, from any thread.
private final class OrderLog: @unchecked Sendable {
    private let lock = NSLock()
    private var all: [String] = []
    func append(_ e: String) { lock.withLock { all.append(e) } }
    var entries: [String] { lock.withLock { all } }
}
