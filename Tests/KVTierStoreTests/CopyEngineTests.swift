import Foundation
import XCTest

@testable import KVTierStore

final class CopyEngineTests: XCTestCase {
    func testBytesArriveIntact() throws {
        let engine = CopyEngine(configuration: .unthrottled)
        for size in [0, 1, 4095, 1 << 20, 1_000_003] {
            let src = HostBuffer(bytes: size)
            let dst = HostBuffer(bytes: size)
            src.fillRandom(seed: UInt64(size) + 7)
            engine.copySync(from: src.pointer, to: dst.pointer, bytes: size)
            XCTAssertTrue(dst.bytes == src.bytes, "copy of \(size) bytes differs")
        }

        // Asynchronous, into HBM pages, as a batch (one layer's blocks).
        let arena = try HBMArena(capacityBytes: 8 * 65536, pageBytes: 65536)
        let pages = try XCTUnwrap(arena.allocate(count: 8))
        let sources = (0..<8).map { i -> HostBuffer in
            let b = HostBuffer(bytes: 65536)
            b.fillRandom(seed: UInt64(100 + i))
            return b
        }
        let transfers = zip(sources, pages).map {
            CopyEngine.Transfer(from: $0.pointer, to: arena.pointer($1), bytes: 65536)
        }
        let arrived = DispatchSemaphore(value: 0)
        engine.copy(transfers) { arrived.signal() }
        XCTAssertEqual(arrived.wait(timeout: .now() + 60), .success)
        for (src, page) in zip(sources, pages) {
            XCTAssertTrue(Array(UnsafeRawBufferPointer(arena.buffer(page))) == src.bytes)
        }
        // And back, one transfer at a time.
        let back = HostBuffer(bytes: 65536)
        let done = DispatchSemaphore(value: 0)
        engine.copy(from: arena.pointer(pages[3]), to: back.pointer, bytes: 65536) { done.signal() }
        XCTAssertEqual(done.wait(timeout: .now() + 60), .success)
        XCTAssertTrue(back.bytes == sources[3].bytes)
        XCTAssertEqual(engine.counters.bytes, [0, 1, 4095, 1 << 20, 1_000_003].reduce(0, +) + 9 * 65536)
    }

    /// Completions run in submission order, and each transfer's bytes are in place when its
    /// completion runs (no later transfer has overwritten them yet).
    func testTransfersCompleteInFIFOOrder() {
        let engine = CopyEngine()  // throttled at 25 GB/s, 10 µs latency
        let count = 64
        let dst = HostBuffer(bytes: 1 << 16)
        // Large transfers first: a non-FIFO engine would let the small ones finish earlier.
        let sources = (0..<count).map { i -> HostBuffer in
            let b = HostBuffer(bytes: i < count / 2 ? 1 << 16 : 256)
            b.fill(UInt8(i))
            return b
        }
        let log = OrderLog()
        for (i, src) in sources.enumerated() {
            let size = src.count
            engine.copy(from: src.pointer, to: dst.pointer, bytes: size) {
                // On the copy-engine queue, which owns `dst` until the completion returns.
                log.append(i, sawOwnBytes: dst.prefix(size).allSatisfy { $0 == UInt8(i) })
            }
        }
        engine.waitUntilIdle()
        XCTAssertEqual(log.order, Array(0..<count))
        XCTAssertEqual(log.mismatches, [])
        XCTAssertEqual(dst.prefix(256), [UInt8](repeating: UInt8(count - 1), count: 256))
        XCTAssertEqual(engine.counters.transfers, count)
    }

    /// The link is full duplex: a load (to the device) queued behind a slow save (to the host)
    /// completes first, while the save still holds its own direction; two transfers of one
    /// direction stay in order.
    func testALoadIsNotQueuedBehindASave() {
        // 100 MB/s: the 16 MB save holds its direction for 160 ms, the 16-byte load needs 1 ms.
        let engine = CopyEngine(configuration: .init(bandwidthBytesPerSecond: 1e8, latencySeconds: 1e-3))
        let page = HostBuffer(bytes: 16 << 20)
        let host = HostBuffer(bytes: 16)
        let other = HostBuffer(bytes: 16)
        let log = OrderLog()
        engine.copyOut(from: page.pointer, bytes: 16 << 20) { _ in log.append(0, sawOwnBytes: true) }
        engine.copy(from: host.pointer, to: other.pointer, bytes: 16, direction: .toDevice) {
            log.append(1, sawOwnBytes: true)
        }
        engine.copyOut(from: page.pointer, bytes: 16) { _ in log.append(2, sawOwnBytes: true) }
        engine.waitUntilIdle()
        XCTAssertEqual(log.order, [1, 0, 2], "the load went ahead of the save; the saves kept their order")
    }

    /// At 1 GB/s, moving 64 MB must take at least 64 ms plus the per-transfer latency.
    /// Only a lower bound: how much longer it takes depends on the machine.
    func testThrottledBandwidthIsALowerBoundOnTime() {
        let bandwidth = 1e9
        let latency = 10e-6
        let engine = CopyEngine(configuration: .init(bandwidthBytesPerSecond: bandwidth, latencySeconds: latency))
        let chunk = 4 << 20
        let chunks = 16
        let src = HostBuffer(bytes: chunk)
        let dst = HostBuffer(bytes: chunk)
        src.fillRandom(seed: 3)
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<chunks {
            engine.copy(from: src.pointer, to: dst.pointer, bytes: chunk) {}
        }
        engine.waitUntilIdle()
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        let minimum = Double(chunk * chunks) / bandwidth + Double(chunks) * latency
        XCTAssertGreaterThanOrEqual(elapsed, minimum)
        let c = engine.counters
        XCTAssertEqual(c.bytes, chunk * chunks)
        XCTAssertEqual(c.transfers, chunks)
        XCTAssertGreaterThanOrEqual(c.busySeconds, minimum)
        XCTAssertLessThanOrEqual(c.copySeconds, c.busySeconds)
        XCTAssertLessThanOrEqual(c.throughputBytesPerSecond!, bandwidth)
        XCTAssertTrue(dst.bytes == src.bytes)

        // A batch is one modelled transfer: one latency, bandwidth over all its bytes.
        let before = engine.counters.busySeconds
        let batch = (0..<4).map { _ in CopyEngine.Transfer(from: src.pointer, to: dst.pointer, bytes: chunk) }
        engine.copySync(batch)
        XCTAssertGreaterThanOrEqual(engine.counters.busySeconds - before, Double(4 * chunk) / bandwidth + latency)
        XCTAssertEqual(engine.counters.transfers, chunks + 1)
    }

    func testModelledTime() {
        let c = CopyEngine.Configuration()
        XCTAssertEqual(c.bandwidthBytesPerSecond, 25e9)
        XCTAssertEqual(c.latencySeconds, 10e-6)
        XCTAssertEqual(c.modelledSeconds(bytes: 25_000_000), 10e-6 + 1e-3, accuracy: 1e-12)
        XCTAssertEqual(CopyEngine.Configuration.unthrottled.modelledSeconds(bytes: 1 << 30), 0)
    }
}

/// Host memory for the tests; freed when the object goes.
private final class HostBuffer: @unchecked Sendable {
    // @unchecked: tests hand the memory to the copy engine and touch it again only after the
    // transfer's completion (the engine's ownership rule).
    let pointer: UnsafeMutableRawPointer
    let count: Int

    init(bytes: Int) {
        count = bytes
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: max(bytes, 1))
    }

    deinit { pointer.deallocate() }

    var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: pointer, count: count)) }

    func prefix(_ n: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(start: pointer, count: min(n, count))) }

    func fill(_ value: UInt8) { pointer.initializeMemory(as: UInt8.self, repeating: value, count: count) }

    func fillRandom(seed: UInt64) {
        var s = seed
        let b = UnsafeMutableRawBufferPointer(start: pointer, count: count)
        for i in 0..<count {
            s = s &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            b[i] = UInt8(truncatingIfNeeded: s >> 33)
        }
    }
}

/// Order in which completions ran.
private final class OrderLog: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var seen: [Int] = []
    private var bad: [Int] = []

    func append(_ i: Int, sawOwnBytes: Bool) {
        lock.withLock {
            seen.append(i)
            if !sawOwnBytes { bad.append(i) }
        }
    }

    var order: [Int] { lock.withLock { seen } }
    var mismatches: [Int] { lock.withLock { bad } }
}
