import Foundation
import XCTest

@testable import KVTierEngine
@testable import KVTierModel
@testable import KVTierStore

/// The turn's page table: reused KV is read where the store's HBM pages hold it, never copied.
final class TurnCacheTests: XCTestCase {
    private let layout = KVLayout(layers: 2, kvHeads: 1, headDim: 4)
    private let model = ModelFingerprint(value: 0x7C)

    private func makeStore() throws -> TieredStore {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-turncache-\(UUID().uuidString)")
            .path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        var c = StoreConfiguration(stateDirectory: dir)
        c.blockTokens = 4
        c.hbmCapacityBytes = 1 << 20
        c.dramCapacityBytes = 1 << 20
        c.link = .init(bandwidthBytesPerSecond: 0, latencySeconds: 0)
        return try TieredStore(configuration: c, model: model, layout: layout, elementType: .f32)
    }

    /// A block of 4 tokens whose keys are base + 0..15 and values base + 100 + 0..15.
    private func block(layer: Int, base: Float) -> KVBlock {
        let keys = (0..<16).map { base + Float($0) }
        let values = (0..<16).map { base + 100 + Float($0) }
        let payload = (keys + values).withUnsafeBytes { Array($0) }
        let key = BlockKey(model: model, session: "s", layer: layer, start: 0, count: 4)
        return KVBlock(key: key, elementType: .f32, rowWidth: 4, payload: payload)
    }

    private func floats(_ bytes: [UInt8]) -> [Float] { bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) } }

    func testLoadedSlotsAreReadInPlace() throws {
        let store = try makeStore()
        var pages: [PageID] = []
        for l in 0..<2 { pages.append(try store.admit(block(layer: l, base: Float(1000 * l)))) }
        let stored = SessionState.BlockRange(home: "s", start: 0, count: 4)

        let cache = TurnCache(store: store, session: "t", layout: layout, capacity: 8)
        defer { cache.finish() }
        cache.startLoad(blocks: [stored], readAhead: nil)
        // Slots 0..<3 are tokens 1..<4 of the stored block; slot 3 is computed.
        try cache.appendLoaded(block: stored, offset: 1, positions: [1, 2, 3])
        XCTAssertEqual(try cache.append(positions: [4]), 3)
        let computed: [Float] = [-1, -2, -3, -4]
        for l in 0..<2 {
            computed.withUnsafeBufferPointer { k in
                cache.write(layer: l, start: 3, count: 1, keys: k.baseAddress!, values: k.baseAddress!)
            }
            cache.waitUntilResident(layer: l)
        }

        let rowBytes = 4 * 4
        for l in 0..<2 {
            let page = store.contents(of: pages[l], rows: 4).keys
            cache.withLayer(l) { view in
                XCTAssertEqual(view.count, 4)
                XCTAssertEqual(view.runs.count, 2, "the loaded run in its page, the computed slot in the turn's buffer")
                XCTAssertEqual(view.runs[0].count, 3)
                XCTAssertEqual(
                    view.runs[0].keys, page + rowBytes, "keys of the loaded slots are read in their HBM page")
                XCTAssertEqual(view.runs[0].values, page + (4 + 1) * rowBytes, "values too")
                XCTAssertEqual(view.runs[1].count, 1)
            }
            XCTAssertTrue(cache.readsInPlace(layer: l, slot: 0))
            XCTAssertFalse(cache.readsInPlace(layer: l, slot: 3))
            // What the saver copies out: the loaded rows from the page, then the computed row.
            let base = Float(1000 * l)
            let expectKeys = (4..<16).map { base + Float($0) } + computed
            let expectValues = (4..<16).map { base + 100 + Float($0) } + computed
            XCTAssertEqual(floats(cache.payload(layer: l, start: 0, count: 4)), expectKeys + expectValues)
        }

    }

    /// A fork's turn reads blocks stored under two namespaces (its source's and its own) in one cache.
    func testLoadsBlocksFromSeveralNamespaces() throws {
        let store = try makeStore()
        let theirs = block(layer: 0, base: 10)
        let own = BlockKey(model: model, session: "fork", layer: 0, start: 4, count: 4)
        try store.admit(theirs)
        try store.admit(KVBlock(key: own, elementType: .f32, rowWidth: 4, payload: block(layer: 0, base: 50).payload))
        let a = SessionState.BlockRange(home: "s", start: 0, count: 4)
        let b = SessionState.BlockRange(home: "fork", start: 4, count: 4)
        for l in 1..<layout.layers {
            try store.admit(block(layer: l, base: 10))
            try store.admit(
                KVBlock(
                    key: BlockKey(model: model, session: "fork", layer: l, start: 4, count: 4), elementType: .f32,
                    rowWidth: 4, payload: block(layer: l, base: 50).payload))
        }
        let cache = TurnCache(store: store, session: "t", layout: layout, capacity: 8)
        defer { cache.finish() }
        // The tightest read buffer: the store moves a layer only once the one before it was
        // asked for. One load over both namespaces, so layer l of each comes before layer l + 1.
        cache.startLoad(blocks: [a, b], readAhead: 0)
        try cache.appendLoaded(block: a, offset: 0, positions: [0, 1, 2, 3])
        try cache.appendLoaded(block: b, offset: 0, positions: [4, 5, 6, 7])
        let done = DispatchSemaphore(value: 0)
        // The waiting thread is the cache's only user until it signals.
        nonisolated(unsafe) let waiting = cache
        let layers = layout.layers
        Thread {
            for l in 0..<layers { waiting.waitUntilResident(layer: l) }
            done.signal()
        }.start()
        guard done.wait(timeout: .now() + 20) == .success else {
            return XCTFail("the layers of the two namespaces never all arrived (the loads wait on each other)")
        }
        XCTAssertEqual(cache.failedBlocks, [])
        XCTAssertTrue(cache.readsInPlace(layer: 0, slot: 0))
        XCTAssertTrue(cache.readsInPlace(layer: 0, slot: 7))
        XCTAssertEqual(
            floats(cache.payload(layer: 0, start: 0, count: 8)),
            (0..<16).map { 10 + Float($0) } + (0..<16).map { 50 + Float($0) } + (0..<16).map { 110 + Float($0) }
                + (0..<16).map { 150 + Float($0) })
    }

    /// Computed slots are written straight into HBM pages reserved for their block; sealing the
    /// block copies in the reused rows below them and puts the values after the keys (the store's
    /// page format), and the store adopts the very page: no copy into HBM.
    func testComputedSlotsAreWrittenInPlaceAndTheSealedPageIsAdopted() throws {
        let store = try makeStore()
        // A stored partial block: tokens 0..<2 of block [0, 4).
        for l in 0..<2 {
            let full = block(layer: l, base: Float(1000 * l))
            let payload = floats(full.payload)
            let two = Array(payload[0..<8]) + Array(payload[16..<24])
            try store.admit(
                KVBlock(
                    key: BlockKey(model: model, session: "s", layer: l, start: 0, count: 2), elementType: .f32,
                    rowWidth: 4, payload: two.withUnsafeBytes { Array($0) }))
        }
        let stored = SessionState.BlockRange(home: "s", start: 0, count: 2)
        let used = store.arena.usedPages
        let cache = TurnCache(store: store, session: "s", layout: layout, capacity: 8)
        cache.startLoad(blocks: [stored], readAhead: nil)
        try cache.appendLoaded(block: stored, offset: 0, positions: [0, 1])
        // Slots 2 and 3 are computed: history indices 2, 3 of the block [0, 4).
        cache.placeComputed(slot: 2, index: 2, block: 0..<4)
        cache.placeComputed(slot: 3, index: 3, block: 0..<4)
        XCTAssertEqual(store.arena.usedPages, used + 2, "one page per layer reserved for the block")
        XCTAssertEqual(try cache.append(positions: [2, 3]), 2)
        let computed: [Float] = (0..<8).map { -1 - Float($0) }
        for l in 0..<2 {
            cache.waitUntilResident(layer: l)
            computed.withUnsafeBufferPointer { k in
                cache.write(layer: l, start: 2, count: 2, keys: k.baseAddress!, values: k.baseAddress!)
            }
            XCTAssertTrue(cache.readsInPlace(layer: l, slot: 3), "computed rows are read where they were written")
            cache.withLayer(l) { view in
                XCTAssertEqual(view.runs.count, 2, "the loaded run in its page, the computed one in the block's page")
            }
        }
        var adopted: [PageID: BlockKey] = [:]
        for l in 0..<2 {
            let page = try XCTUnwrap(cache.seal(layer: l, blockStart: 0, count: 4))
            let key = BlockKey(model: model, session: "s", layer: l, start: 0, count: 4)
            try store.adopt(page, as: key)
            adopted[page] = key
            let base = Float(1000 * l)
            let expect = (0..<8).map { base + Float($0) } + computed + (0..<8).map { base + 100 + Float($0) } + computed
            XCTAssertEqual(
                floats(store.payload(inPage: page, rows: 4)), expect,
                "the adopted page holds the block in the store's format")
            XCTAssertEqual(
                floats(cache.payload(layer: l, start: 0, count: 4)), expect, "and the turn still reads the same rows")
        }
        XCTAssertNil(cache.seal(layer: 0, blockStart: 0, count: 4), "a layer is sealed once")
        cache.finish(adopted: adopted)
        XCTAssertEqual(store.arena.usedPages, used + 2, "the adopted pages are the block's pages in HBM")
        for l in 0..<2 {
            XCTAssertTrue(store.isInHBM(BlockKey(model: model, session: "s", layer: l, start: 0, count: 4)))
        }
    }

    /// A block sealed shorter than its room (the turn's last, partial block) is in the store's
    /// page format as it is; pages not adopted go back to the arena when the turn finishes.
    func testAShortBlockIsSealedAsItIsAndUnadoptedPagesGoBack() throws {
        let store = try makeStore()
        let used = store.arena.usedPages
        let cache = TurnCache(store: store, session: "s", layout: layout, capacity: 8)
        for i in 0..<3 { cache.placeComputed(slot: i, index: 4 + i, block: 4..<8) }
        _ = try cache.append(positions: [4, 5, 6])
        let rows: [Float] = (0..<12).map(Float.init)
        for l in 0..<2 {
            rows.withUnsafeBufferPointer { r in
                cache.write(layer: l, start: 0, count: 3, keys: r.baseAddress!, values: r.baseAddress! + 0)
            }
        }
        let page = try XCTUnwrap(cache.seal(layer: 0, blockStart: 4, count: 3))
        XCTAssertEqual(floats(store.payload(inPage: page, rows: 3)), rows + rows)
        XCTAssertEqual(floats(cache.payload(layer: 0, start: 0, count: 3)), rows + rows)
        cache.finish()
        XCTAssertEqual(store.arena.usedPages, used, "every reserved page went back")
    }

    /// With no HBM page free, computed rows stay in the turn's own buffer (and are saved by copy).
    func testWithoutAFreePageComputedRowsStayInTheTurnsBuffer() throws {
        let store = try makeStore()
        let hold = try XCTUnwrap(store.arena.allocate(count: store.arena.freePages))
        defer { store.arena.free(hold) }
        let cache = TurnCache(store: store, session: "s", layout: layout, capacity: 8)
        defer { cache.finish() }
        cache.placeComputed(slot: 0, index: 0, block: 0..<4)
        _ = try cache.append(positions: [0])
        let row: [Float] = [1, 2, 3, 4]
        row.withUnsafeBufferPointer { r in
            cache.write(layer: 0, start: 0, count: 1, keys: r.baseAddress!, values: r.baseAddress!)
        }
        XCTAssertFalse(cache.readsInPlace(layer: 0, slot: 0))
        XCTAssertNil(cache.seal(layer: 0, blockStart: 0, count: 1))
        XCTAssertEqual(floats(cache.payload(layer: 0, start: 0, count: 1)), row + row)
    }
}
