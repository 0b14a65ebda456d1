import Foundation

/// Models the PCIe link between host DRAM and the simulated HBM. PCIe is full duplex and a GPU
/// has a copy engine for each direction, so this has two serial Dispatch queues,
/// "kvtier.copy-engine.to-device" (DRAM -> HBM: loads) and "kvtier.copy-engine.to-host"
/// (HBM -> DRAM: saves), each performing its transfers as real `memcpy`s and then, when a
/// bandwidth is configured, waiting until `latency + bytes / bandwidth` has passed since the
/// transfer started. Effective throughput in each direction is min(memcpy, modelled link);
/// transfers of one direction never overlap (one DMA engine each, FIFO), and a save never
/// holds up a load.
///
/// Queue and lock ownership:
/// * each direction's queue (serial) owns the bytes of every transfer queued on it, source and
///   destination, from the moment the transfer is enqueued until its completion has run; it is
///   the only thread that touches them meanwhile (see `HBMArena` for the page ownership rule).
/// * `lock` (an `NSLock`) guards `totals`, written on the queues and read from any thread.
/// * Completions run on their direction's queue, one after another in submission order; keep
///   them short (signal a semaphore, hop to another queue) since the link is idle while they run.
public final class CopyEngine: @unchecked Sendable {
    // @unchecked: the configuration is immutable, the queues are thread-safe, `totals` is only
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

    /// Which way a transfer goes.
    public enum Direction: Sendable {
        /// DRAM -> HBM (loads).
        case toDevice
        /// HBM -> DRAM (saves, demotions).
        case toHost
    }

    public let configuration: Configuration
    private let toDevice = DispatchQueue(label: "kvtier.copy-engine.to-device", qos: .userInitiated)
    private let toHost = DispatchQueue(label: "kvtier.copy-engine.to-host", qos: .userInitiated)
    private let lock = NSLock()
    /// Guarded by `lock`.
    private var totals = Counters()

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    private func queue(_ direction: Direction) -> DispatchQueue { direction == .toDevice ? toDevice : toHost }

    /// Enqueues a copy; `completion` runs on the direction's queue after the bytes have
    /// arrived and the modelled link time has passed. Transfers of one direction complete in
    /// submission order. Until then the queue owns both regions (see `Transfer`).
    public func copy(
        from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int,
        direction: Direction = .toDevice, completion: @escaping @Sendable () -> Void
    ) {
        copy([Transfer(from: source, to: destination, bytes: bytes)], direction: direction, completion: completion)
    }

    /// Enqueues several copies as one modelled DMA (a scatter-gather list: one latency for
    /// the batch, bandwidth over the sum of bytes), e.g. all blocks of one layer of a session.
    public func copy(
        _ transfers: [Transfer], direction: Direction = .toDevice, completion: @escaping @Sendable () -> Void
    ) {
        queue(direction).async { [self] in
            perform(transfers)
            completion()
        }
    }

    /// Copies owned bytes (a DRAM block's payload: keys, then as many bytes of values) into HBM
    /// pages, the keys at `destination` and the values at `destination + valuesOffset` (the
    /// store's page format), one modelled transfer for the batch. The arrays stay alive in the
    /// closure until the copy ran, so no staging copy is needed.
    public func copy(
        payloads: [(source: [UInt8], destination: UnsafeMutableRawPointer)], valuesOffset: Int,
        completion: @escaping @Sendable () -> Void
    ) {
        let jobs = payloads.map { OwnedTransfer(source: $0.source, destination: $0.destination) }
        toDevice.async { [self] in
            measure(bytes: jobs.reduce(0) { $0 + $1.source.count }) {
                for j in jobs {
                    j.source.withUnsafeBytes { src in
                        guard let base = src.baseAddress else { return }
                        let half = src.count / 2
                        j.destination.copyMemory(from: base, byteCount: half)
                        (j.destination + valuesOffset).copyMemory(from: base + half, byteCount: src.count - half)
                    }
                }
            }
            completion()
        }
    }

    /// Copies `bytes` out of an HBM page into a new array (HBM -> DRAM), handed to `completion`.
    public func copyOut(from source: UnsafeRawPointer, bytes: Int, completion: @escaping @Sendable ([UInt8]) -> Void) {
        let src = SourcePointer(source: source)
        toHost.async { [self] in
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

    /// Copies several regions of HBM pages (each `(start, bytes)`) into one new array, in order,
    /// as one modelled transfer (a scatter-gather list), handed to `completion`.
    public func copyOut(
        pieces: [(source: UnsafeRawPointer, bytes: Int)], completion: @escaping @Sendable ([UInt8]) -> Void
    ) {
        let sources = pieces.map { (SourcePointer(source: $0.source), $0.bytes) }
        let total = pieces.reduce(0) { $0 + $1.bytes }
        toHost.async { [self] in
            var out: [UInt8] = []
            measure(bytes: total) {
                out = [UInt8](unsafeUninitializedCapacity: total) { buffer, count in
                    var at = 0
                    if let base = buffer.baseAddress {
                        for (src, n) in sources {
                            (base + at).initialize(from: src.source.assumingMemoryBound(to: UInt8.self), count: n)
                            at += n
                        }
                    }
                    count = at
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

    /// Copies and returns when the transfer has completed, after everything queued before it
    /// in its direction. Must not be called from a copy engine queue (for example from a
    /// completion).
    public func copySync(
        from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int,
        direction: Direction = .toDevice
    ) {
        copySync([Transfer(from: source, to: destination, bytes: bytes)], direction: direction)
    }

    /// Batch form of `copySync(from:to:bytes:)`.
    public func copySync(_ transfers: [Transfer], direction: Direction = .toDevice) {
        dispatchPrecondition(condition: .notOnQueue(toDevice))
        dispatchPrecondition(condition: .notOnQueue(toHost))
        queue(direction).sync { perform(transfers) }
    }

    /// Returns when every transfer queued so far, both ways, has completed (and its completion
    /// has run). Must not be called from a copy engine queue.
    public func waitUntilIdle() {
        dispatchPrecondition(condition: .notOnQueue(toDevice))
        dispatchPrecondition(condition: .notOnQueue(toHost))
        toHost.sync {}
        toDevice.sync {}
    }

    /// A snapshot of the totals.
    public var counters: Counters { lock.withLock { totals } }

    /// Runs on a direction's queue.
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
