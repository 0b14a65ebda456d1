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

        let cache = TurnCache(store: store, layout: layout, capacity: 8)
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
            let page = UnsafeRawPointer(store.contents(of: pages[l], bytes: 2 * 4 * rowBytes).baseAddress!)
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
        let cache = TurnCache(store: store, layout: layout, capacity: 8)
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
}
