import Foundation

/// Models the PCIe link between host DRAM and the simulated HBM: one serial Dispatch queue,
/// "kvtier.copy-engine", that performs each transfer as a real `memcpy` and then, when a
/// bandwidth is configured, waits until `latency + bytes / bandwidth` has passed since the
/// transfer started. Effective throughput is therefore min(memcpy, modelled link), and
/// transfers never overlap (one DMA engine, FIFO).
///
/// Queue and lock ownership:
/// * `queue` (serial) owns the bytes of every queued transfer's source and destination from
///   the moment the transfer is enqueued until its completion has run; it is the only thread
///   that touches them meanwhile (see `HBMArena` for the page ownership rule).
/// * `lock` (an `NSLock`) guards `totals`, written on `queue` and read from any thread.
/// * Completions run on `queue`, one after another in submission order; keep them short
///   (signal a semaphore, hop to another queue) since the link is idle while they run.
public final class CopyEngine: @unchecked Sendable {
    // @unchecked: the configuration is immutable, `queue` is thread-safe, `totals` is only
    // touched under `lock`.

    /// The modelled link.
    public struct Configuration: Sendable, Equatable {
        /// Bytes per second of the link; 0 means as fast as `memcpy` (no link model, no latency).
        public var bandwidthBytesPerSecond: Double
        /// Fixed cost of each transfer, in seconds (applies only when bandwidth > 0).
        public var latencySeconds: Double

        /// Defaults: a PCIe 4.0 x16 link, 25 GB/s and 10 µs per transfer.
        public init(bandwidthBytesPerSecond: Double = 25e9, latencySeconds: Double = 10e-6) {
            self.bandwidthBytesPerSecond = max(bandwidthBytesPerSecond, 0)
            self.latencySeconds = max(latencySeconds, 0)
        }

        /// No link model: transfers run at memcpy speed.
        public static let unthrottled = Configuration(bandwidthBytesPerSecond: 0, latencySeconds: 0)

        /// The time the link needs for one transfer of `bytes` (0 when unthrottled).
        public func modelledSeconds(bytes: Int) -> Double {
            bandwidthBytesPerSecond > 0 ? latencySeconds + Double(bytes) / bandwidthBytesPerSecond : 0
        }
    }

    /// One copy of `bytes` bytes between two non-overlapping regions.
    ///
    /// `@unchecked Sendable` although it holds raw pointers: a transfer is handed to the copy
    /// engine's queue, which becomes the exclusive owner of both regions until the transfer's
    /// completion has run (the submitter neither reads the destination nor writes the source
    /// nor frees either meanwhile), so no two threads access the bytes concurrently, and the
    /// queue's hand-off and the completion order all accesses.
    public struct Transfer: @unchecked Sendable {
        public let source: UnsafeRawPointer
        public let destination: UnsafeMutableRawPointer
        public let bytes: Int

        public init(from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int) {
            precondition(bytes >= 0, "CopyEngine.Transfer: negative byte count \(bytes)")
            let s = UInt(bitPattern: source)
            let d = UInt(bitPattern: destination)
            let n = UInt(bytes)
            precondition(bytes == 0 || s + n <= d || d + n <= s, "CopyEngine.Transfer: source and destination overlap")
            self.source = source
            self.destination = destination
            self.bytes = bytes
        }
    }

    /// Totals since the engine was created.
    public struct Counters: Sendable, Equatable {
        /// Transfers completed (a batch counts once: one modelled DMA).
        public var transfers = 0
        /// Bytes copied.
        public var bytes = 0
        /// Seconds the link was busy: memcpy plus modelled waiting, summed over transfers.
        public var busySeconds = 0.0
        /// Seconds spent in memcpy alone.
        public var copySeconds = 0.0

        public init() {}

        /// Bytes per busy second; nil before the first transfer.
        public var throughputBytesPerSecond: Double? {
            busySeconds > 0 ? Double(bytes) / busySeconds : nil
        }
    }

    public let configuration: Configuration
    private let queue = DispatchQueue(label: "kvtier.copy-engine", qos: .userInitiated)
    private let lock = NSLock()
    /// Guarded by `lock`.
    private var totals = Counters()

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// Enqueues a copy; `completion` runs on the copy engine's queue after the bytes have
    /// arrived and the modelled link time has passed. Transfers complete in submission order.
    /// Until then the queue owns both regions (see `Transfer`).
    public func copy(
        from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int,
        completion: @escaping @Sendable () -> Void
    ) {
        copy([Transfer(from: source, to: destination, bytes: bytes)], completion: completion)
    }

    /// Enqueues several copies as one modelled DMA (a scatter-gather list: one latency for
    /// the batch, bandwidth over the sum of bytes), e.g. all blocks of one layer of a session.
    public func copy(_ transfers: [Transfer], completion: @escaping @Sendable () -> Void) {
        queue.async { [self] in
            perform(transfers)
            completion()
        }
    }

    /// Copies and returns when the transfer has completed, after everything queued before it.
    /// Must not be called from the copy engine's queue (for example from a completion).
    /// Copies owned bytes (a DRAM block's payload) into HBM pages, one modelled transfer for the
    /// batch. The arrays stay alive in the closure until the copy ran, so no staging copy is needed.
    public func copy(
        payloads: [(source: [UInt8], destination: UnsafeMutableRawPointer)], completion: @escaping @Sendable () -> Void
    ) {
        let jobs = payloads.map { OwnedTransfer(source: $0.source, destination: $0.destination) }
        queue.async { [self] in
            measure(bytes: jobs.reduce(0) { $0 + $1.source.count }) {
                for j in jobs {
                    j.source.withUnsafeBytes { src in
                        if let base = src.baseAddress { j.destination.copyMemory(from: base, byteCount: src.count) }
                    }
                }
            }
            completion()
        }
    }

    /// Copies `bytes` out of an HBM page into a new array (HBM -> DRAM), handed to `completion`.
    public func copyOut(from source: UnsafeRawPointer, bytes: Int, completion: @escaping @Sendable ([UInt8]) -> Void) {
        let src = SourcePointer(source: source)
        queue.async { [self] in
            var out: [UInt8] = []
            measure(bytes: bytes) {
                out = [UInt8](unsafeUninitializedCapacity: bytes) { buffer, count in
                    if let base = buffer.baseAddress {
                        base.initialize(from: src.source.assumingMemoryBound(to: UInt8.self), count: bytes)
                    }
                    count = bytes
                }
            }
            completion(out)
        }
    }

    /// An HBM page being read; the page stays allocated until the transfer completes.
    private struct SourcePointer: @unchecked Sendable {
        let source: UnsafeRawPointer
    }

    /// An owned source and an HBM destination that only this transfer writes until it completes.
    private struct OwnedTransfer: @unchecked Sendable {
        let source: [UInt8]
        let destination: UnsafeMutableRawPointer
    }

    public func copySync(from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int) {
        copySync([Transfer(from: source, to: destination, bytes: bytes)])
    }

    /// Batch form of `copySync(from:to:bytes:)`.
    public func copySync(_ transfers: [Transfer]) {
        dispatchPrecondition(condition: .notOnQueue(queue))
        queue.sync { perform(transfers) }
    }

    /// Returns when every transfer queued so far has completed (and its completion has run).
    /// Must not be called from the copy engine's queue.
    public func waitUntilIdle() {
        dispatchPrecondition(condition: .notOnQueue(queue))
        queue.sync {}
    }

    /// A snapshot of the totals.
    public var counters: Counters { lock.withLock { totals } }

    /// Runs on `queue`.
    private func perform(_ transfers: [Transfer]) {
        measure(bytes: transfers.reduce(0) { $0 + max($1.bytes, 0) }) {
            for t in transfers where t.bytes > 0 {
                t.destination.copyMemory(from: t.source, byteCount: t.bytes)
            }
        }
    }

    /// Runs `body` (the real copy of `bytes`), then holds the link until the modelled time has passed.
    private func measure(bytes: Int, _ body: () -> Void) {
        let start = DispatchTime.now().uptimeNanoseconds
        body()
        let copied = DispatchTime.now().uptimeNanoseconds
        let modelled = configuration.modelledSeconds(bytes: bytes)
        if modelled > 0 {
            CopyEngine.wait(until: start + UInt64((modelled * 1e9).rounded(.up)))
        }
        let end = DispatchTime.now().uptimeNanoseconds
        lock.withLock {
            totals.transfers += 1
            totals.bytes += bytes
            totals.busySeconds += Double(end - start) * 1e-9
            totals.copySeconds += Double(copied - start) * 1e-9
        }
    }

    /// Returns no earlier than `deadline` (uptime nanoseconds). Sleeps while more than 100 µs
    /// remain (waking ~50 µs early, the usual timer slack), then spins for the rest.
    /// Returns once `deadline` (uptime nanoseconds) has passed (the store's disk model uses it too).
    static func wait(until deadline: UInt64) {
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            if now >= deadline { return }
            let remaining = deadline - now
            if remaining > 100_000 {
                usleep(UInt32(min((remaining - 50_000) / 1000, UInt64(UInt32.max))))
            }
        }
    }
}
