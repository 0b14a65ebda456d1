import Dispatch
import Foundation
import KVTierRedis

/// The remote tier: blocks and session records in a Redis Cluster that several kvtierd nodes
/// share, below the disk tier. Writes go out behind the local tiers (a turn never waits for
/// them); reads come on a local miss, a layer's blocks in one pipeline.
///
/// Threads:
/// - `queue` (serial, "kvtier.remote.writer") owns `writer` and sends every write, delete and
///   probe, in the order they were asked for.
/// - Reads run on the caller's thread (the store's loader) through `reader`, a second client
///   (its own lock), so a read never waits behind a long write-back.
/// - `lock` guards `pending`, `known`, `retiring`, `health`, `counters` and `observer`; never held
///   across I/O.
public final class RemoteTier: @unchecked Sendable {
    public let configuration: RemoteTierConfiguration
    private let reader: RedisClusterClient
    private let writer: RedisClusterClient
    private let queue = DispatchQueue(label: "kvtier.remote.writer")
    private let lock = NSLock()

    private enum Write {
        /// A block, encoded on `queue` when it goes out (LZ4 off the saving thread).
        case block(KVBlock)
        case put(key: [UInt8], value: [UInt8])
        case delete(key: [UInt8], block: BlockKey?)

        var bytes: Int {
            switch self {
            case .block(let b): return b.payload.count
            case .put(let k, let v): return k.count + v.count
            case .delete(let k, _): return k.count
            }
        }

        var isPut: Bool {
            if case .delete = self { return false }
            return true
        }
    }

    // Guarded by `lock`:
    private var pending: [Write] = []
    private var draining = false
    private var known: [String: Set<BlockKey>] = [:]
    /// Blocks `retire` will delete unless they are written again first.
    private var retiring: Set<BlockKey> = []
    private var health = RemoteTierHealth()
    private var counters = RemoteTierStats()
    private var observer: (@Sendable (RemoteTierHealth) -> Void)?
    /// Set on `queue` while degraded or full.
    private var retryTimer: DispatchSourceTimer?

    public init(configuration: RemoteTierConfiguration) {
        self.configuration = configuration
        var c = RedisClusterClient.Configuration(seeds: configuration.seeds)
        c.credentials = configuration.password.map { .init(user: configuration.user, password: $0) }
        c.connectTimeout = configuration.connectTimeoutSeconds
        c.ioTimeout = configuration.ioTimeoutSeconds
        writer = RedisClusterClient(configuration: c)
        // A read is on a turn's critical path: two rounds, then the tokens are recomputed.
        c.maxAttempts = 2
        reader = RedisClusterClient(configuration: c)
    }

    deinit { retryTimer?.cancel() }

    // MARK: Writes (asynchronous, in order)

    /// Queues `block` for the cluster; dropped (counted) when the tier cannot take it.
    public func put(_ block: KVBlock) {
        lock.withLock { _ = retiring.remove(block.key) }
        enqueue(.block(block))
    }

    /// Queues the deletion of blocks (a newer version replaces them, or nobody references them).
    public func delete(_ keys: [BlockKey]) {
        for k in keys { enqueue(.delete(key: key(k), block: k)) }
    }

    /// Deletes blocks nobody here references any more, `retireSeconds` from now: a node that read
    /// the record naming them just before the record that no longer does went out still finds
    /// them. A block written again meanwhile is not deleted.
    public func retire(_ keys: [BlockKey]) {
        guard !keys.isEmpty else { return }
        lock.withLock { retiring.formUnion(keys) }
        let delay = DispatchTimeInterval.milliseconds(Int(configuration.retireSeconds * 1000))
        queue.asyncAfter(deadline: .now() + delay) { [weak self] in
            guard let self else { return }
            let due = lock.withLock { () -> [BlockKey] in
                let still = keys.filter { retiring.contains($0) }
                retiring.subtract(still)
                return still
            }
            delete(due)
        }
    }

    /// Retires every block of `session` this tier knows of.
    public func retire(session: String, model: ModelFingerprint) {
        retire(knownKeys(session: session, model: model))
    }

    public func putMetadata(model: ModelFingerprint, name: String, value: [UInt8]) {
        let stored = RemoteRecordFormat.encodeMetadata(model: model, name: name, value: value)
        enqueue(.put(key: metadataKey(model, name), value: stored))
    }

    public func deleteMetadata(model: ModelFingerprint, name: String) {
        enqueue(.delete(key: metadataKey(model, name), block: nil))
    }

    /// Waits until every write queued so far has been sent (or dropped).
    public func waitForWrites() {
        queue.sync {}
    }

    private func enqueue(_ write: Write) {
        let start: Bool = lock.withLock {
            if write.isPut {
                guard health.isHealthy, counters.pendingBytes + write.bytes <= configuration.maxPendingWriteBytes else {
                    counters.droppedWrites += 1
                    return false
                }
            }
            pending.append(write)
            counters.pendingWrites += 1
            counters.pendingBytes += write.bytes
            if draining { return false }
            draining = true
            return true
        }
        if start { queue.async { self.drain() } }
    }

    /// Sends the queued writes in pipelines of at most 64 commands or 32 MiB (on `queue`).
    private func drain() {
        while true {
            let batch: [Write] = lock.withLock {
                var n = 0
                var bytes = 0
                while n < pending.count && n < 64 && (n == 0 || bytes + pending[n].bytes <= 32 << 20) {
                    bytes += pending[n].bytes
                    n += 1
                }
                let batch = Array(pending.prefix(n))
                pending.removeFirst(n)
                counters.pendingWrites -= n
                counters.pendingBytes -= bytes
                if batch.isEmpty { draining = false }
                return batch
            }
            if batch.isEmpty { return }
            send(batch)
        }
    }

    private func send(_ batch: [Write]) {
        let writable = lock.withLock { health.isHealthy }
        let ttl = configuration.ttlSeconds
        // While degraded or full, puts are dropped; deletions still go out when the cluster is
        // reachable, so an old version can never outlive its replacement there.
        let readable = lock.withLock { health.readable }
        var sendable: [(write: Write, key: [UInt8], value: [UInt8]?)] = []
        var dropped = 0
        for w in batch {
            switch w {
            case .block(let b) where writable:
                let value = RemoteRecordFormat.encodeBlock(b)
                if value.count <= configuration.maxObjectBytes {
                    sendable.append((w, key(b.key), value))
                } else {
                    dropped += 1
                }
            case .put(let k, let v) where writable:
                sendable.append((w, k, v))
            case .delete(let k, _) where readable:
                sendable.append((w, k, nil))
            default:
                dropped += 1
            }
        }
        if dropped > 0 { lock.withLock { counters.droppedWrites += dropped } }
        guard !sendable.isEmpty else { return }
        let commands = sendable.map { w -> RedisClusterClient.Command in
            guard let v = w.value else { return .init([Array("DEL".utf8), w.key], key: w.key) }
            var args: [[UInt8]] = [Array("SET".utf8), w.key, v]
            if ttl > 0 { args += [Array("EX".utf8), Array(String(ttl).utf8)] }
            return .init(args, key: w.key)
        }
        let replies: [RESPValue]
        do {
            replies = try writer.execute(commands)
        } catch {
            lock.withLock {
                counters.errors += 1
                counters.droppedWrites += sendable.filter { $0.write.isPut }.count
            }
            degrade(.degraded, error)
            return
        }
        var full: String?
        lock.withLock {
            for (w, r) in zip(sendable, replies) {
                if let message = r.errorMessage {
                    counters.errors += 1
                    counters.droppedWrites += 1
                    if message.hasPrefix("OOM") { full = message }
                    continue
                }
                switch w.write {
                case .block(let b):
                    counters.writes += 1
                    counters.bytesWritten += w.key.count + (w.value?.count ?? 0)
                    known[b.key.session, default: []].insert(b.key)
                case .put:
                    counters.writes += 1
                    counters.bytesWritten += w.key.count + (w.value?.count ?? 0)
                case .delete(_, let block):
                    if let block { known[block.session]?.remove(block) }
                }
            }
        }
        if let full { degrade(.full, RedisError.unavailable(full)) }
    }

    // MARK: Reads (on the caller's thread)

    /// The blocks of `keys` the cluster holds and that pass every check; the others are absent.
    public func get(_ keys: [BlockKey]) -> [BlockKey: KVBlock] {
        guard !keys.isEmpty else { return [:] }
        guard lock.withLock({ health.readable }) else {
            lock.withLock { counters.skippedReads += keys.count }
            return [:]
        }
        let replies: [RESPValue]
        do {
            replies = try reader.execute(
                keys.map { k in
                    let rk = key(k)
                    return .init([Array("GET".utf8), rk], key: rk)
                })
        } catch {
            readFailed(error)
            return [:]
        }
        var found: [BlockKey: KVBlock] = [:]
        lock.withLock {
            for (k, r) in zip(keys, replies) {
                guard case .bulk(let value?) = r else {
                    if r.errorMessage != nil { counters.errors += 1 }
                    counters.misses += 1
                    known[k.session]?.remove(k)
                    continue
                }
                counters.bytesRead += value.count
                switch RemoteRecordFormat.decodeBlock(value, for: k) {
                case .success(let b):
                    counters.hits += 1
                    found[k] = b
                case .failure:
                    counters.corrupt += 1
                    counters.misses += 1
                }
            }
        }
        return found
    }

    /// A record written by any node, or nil (absent, damaged, or the tier is degraded).
    public func metadata(model: ModelFingerprint, name: String) -> [UInt8]? {
        guard lock.withLock({ health.readable }) else { return nil }
        let k = metadataKey(model, name)
        do {
            let reply = try reader.execute([.init([Array("GET".utf8), k], key: k)])[0]
            guard case .bulk(let stored?) = reply else { return nil }
            lock.withLock { counters.bytesRead += stored.count }
            guard let value = RemoteRecordFormat.decodeMetadata(stored, model: model, name: name) else {
                lock.withLock { counters.corrupt += 1 }
                return nil
            }
            return value
        } catch {
            readFailed(error)
            return nil
        }
    }

    /// A read that failed is a miss. It degrades the tier only when the whole cluster is out of
    /// reach or refuses us; one node down (a failover under way) costs only its own keys.
    private func readFailed(_ error: RedisError) {
        lock.withLock { counters.errors += 1 }
        switch error {
        case .noTopology, .authentication: degrade(.degraded, error)
        default: break
        }
    }

    // MARK: What the cluster holds

    /// Records that the cluster holds `keys` (named by a session record read from it).
    public func adopt(_ keys: [BlockKey]) {
        lock.withLock { for k in keys { known[k.session, default: []].insert(k) } }
    }

    public func knows(_ key: BlockKey) -> Bool { lock.withLock { known[key.session]?.contains(key) ?? false } }

    public func knownKeys(session: String, model: ModelFingerprint) -> [BlockKey] {
        lock.withLock { (known[session] ?? []).filter { $0.model == model } }
    }

    // MARK: Health

    public var stats: RemoteTierStats {
        lock.withLock {
            var s = counters
            s.health = health
            s.knownBlocks = known.values.reduce(0) { $0 + $1.count }
            return s
        }
    }

    /// `body` runs (on the writer queue or a reader's thread) whenever the health changes.
    public func onHealthChange(_ body: @escaping @Sendable (RemoteTierHealth) -> Void) {
        lock.withLock { observer = body }
    }

    /// Probes the cluster now (what the retry timer does); returns the health after it.
    @discardableResult
    public func probe() -> RemoteTierHealth {
        queue.sync { probeOnQueue() }
        return lock.withLock { health }
    }

    private func degrade(_ state: RemoteTierHealth.State, _ error: any Error) {
        let reason = (error as? RedisError)?.description ?? "\(error)"
        let action: String
        switch (state, error as? RedisError) {
        case (.full, _):
            action = "raise the cluster's maxmemory, add shards, or lower store.remote.ttl_seconds"
        case (_, .authentication?):
            action = "fix store.remote.user or password_file; retried every \(configuration.retryIntervalSeconds) s"
        default:
            action = "kvtierd serves from its local tiers and retries every \(configuration.retryIntervalSeconds) s"
        }
        // The reason is kept up to date; the observer (one log line) hears only of a new state.
        let changed: (RemoteTierHealth, (@Sendable (RemoteTierHealth) -> Void)?)? = lock.withLock {
            let newState = health.state != state
            if health.isHealthy { health.since = Self.timestamp() }
            health.state = state
            health.reason = reason
            health.action = action
            return newState ? (health, observer) : nil
        }
        queue.async { self.startRetryTimerOnQueue() }
        guard let (h, notify) = changed else { return }
        notify?(h)
    }

    private func startRetryTimerOnQueue() {
        guard retryTimer == nil else { return }
        let t = DispatchSource.makeTimerSource(queue: queue)
        let interval = DispatchTimeInterval.milliseconds(Int(configuration.retryIntervalSeconds * 1000))
        t.schedule(deadline: .now() + interval, repeating: interval)
        t.setEventHandler { [weak self] in self?.probeOnQueue() }
        t.resume()
        retryTimer = t
    }

    /// Writes a small expiring probe key: success makes the tier healthy again.
    private func probeOnQueue() {
        guard !lock.withLock({ health.isHealthy }) else { return }
        reader.reset()
        writer.reset()
        let k = Array("\(configuration.keyPrefix)probe".utf8)
        let reply: RESPValue
        do {
            reply = try writer.execute([
                .init([Array("SET".utf8), k, Array("1".utf8), Array("EX".utf8), Array("60".utf8)], key: k)
            ])[0]
        } catch {
            degrade(.degraded, error)
            return
        }
        if let message = reply.errorMessage {
            degrade(message.hasPrefix("OOM") ? .full : .degraded, RedisError.unavailable(message))
            return
        }
        retryTimer?.cancel()
        retryTimer = nil
        let (h, notify) = lock.withLock { () -> (RemoteTierHealth, (@Sendable (RemoteTierHealth) -> Void)?) in
            health = RemoteTierHealth()
            return (health, observer)
        }
        notify?(h)
    }

    private func key(_ k: BlockKey) -> [UInt8] { RemoteRecordFormat.blockKey(k, prefix: configuration.keyPrefix) }

    private func metadataKey(_ model: ModelFingerprint, _ name: String) -> [UInt8] {
        RemoteRecordFormat.metadataKey(model: model, name: name, prefix: configuration.keyPrefix)
    }

    private static func timestamp() -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: Date())
    }
}
