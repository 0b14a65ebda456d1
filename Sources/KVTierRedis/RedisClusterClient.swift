import Foundation

/// A Redis Cluster client: routes each command to the master of its key's hash slot, pipelines
/// the commands bound for one node, follows `MOVED` (and refreshes its slot map) and `ASK`
/// redirections, waits out `TRYAGAIN` and `CLUSTERDOWN`, and reconnects with back-off after a
/// node fails (a replica promoted in its place appears in the refreshed map).
///
/// Threads: every method may be called from any thread; `lock` serializes whole operations, so
/// the slot map, the connections and the counters are only touched under it. A caller that
/// wants reads and writes to proceed in parallel uses two clients.
public final class RedisClusterClient: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// "host:port" of nodes to learn the cluster from (any one is enough).
        public var seeds: [String]
        public var credentials: RedisConnection.Credentials?
        public var connectTimeout: Double = 1
        public var ioTimeout: Double = 2
        /// Rounds of redirection or retry one command gets before it fails.
        public var maxAttempts = 8
        /// Of those, rounds in which a node could not be reached or no map could be had.
        public var maxFailedRounds = 3
        /// First back-off between retry rounds (doubles each round, at most 0.5 s).
        public var backoff: Double = 0.02
        /// A node whose connection failed is not tried again for this long (its commands fail at
        /// once, unless a refreshed map routes them elsewhere): a stalled node costs one timeout,
        /// not one per command.
        public var downSeconds: Double = 1

        public init(seeds: [String], credentials: RedisConnection.Credentials? = nil) {
            self.seeds = seeds
            self.credentials = credentials
        }
    }

    /// A command and the key it is routed by (nil: any node).
    public struct Command: Sendable {
        public var arguments: [[UInt8]]
        public var key: [UInt8]?

        public init(_ arguments: [[UInt8]], key: [UInt8]?) {
            self.arguments = arguments
            self.key = key
        }

        public init(_ arguments: [String], key: String?) {
            self.arguments = arguments.map { Array($0.utf8) }
            self.key = key.map { Array($0.utf8) }
        }
    }

    /// What the client has done, for metrics and tests.
    public struct Counters: Sendable, Equatable {
        public var moved = 0
        public var asked = 0
        public var retries = 0
        public var reconnects = 0
        public var topologyRefreshes = 0
        /// Command groups not sent because their node was marked down.
        public var skippedDown = 0
    }

    public let configuration: Configuration
    private let lock = NSLock()
    // Guarded by `lock`:
    private var slots: [String?] = Array(repeating: nil, count: HashSlot.count)
    private var connections: [String: RedisConnection] = [:]
    private var mapIsStale = true
    private var counters = Counters()
    /// Nodes whose connection failed, until when they are left alone.
    private var downUntil: [String: Date] = [:]

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    public var stats: Counters { lock.withLock { counters } }

    /// The master serving `slot` in the current map (nil before the first refresh).
    public func master(ofSlot slot: Int) -> String? { lock.withLock { slots[slot] } }

    /// Runs `commands`, each on the master of its key's slot; returns the replies in order.
    /// Server error replies other than redirections (e.g. `-OOM`) are returned as values.
    /// Throws when the cluster cannot be reached, refuses authentication, or keeps redirecting.
    public func execute(_ commands: [Command]) throws(RedisError) -> [RESPValue] {
        lock.lock()
        defer { lock.unlock() }
        return try executeLocked(commands)
    }

    /// Forgets the slot map and every connection (the next command starts from the seeds).
    public func reset() {
        lock.withLock {
            for c in connections.values { c.close() }
            connections = [:]
            downUntil = [:]
            mapIsStale = true
        }
    }

    // MARK: - Under `lock`

    private func executeLocked(_ commands: [Command]) throws(RedisError) -> [RESPValue] {
        var results = [RESPValue?](repeating: nil, count: commands.count)
        var pending = Array(commands.indices)
        var asking: [Int: String] = [:]
        var lastFailure: RedisError?
        var attempt = 0
        var failedRounds = 0
        while !pending.isEmpty {
            if attempt >= configuration.maxAttempts || failedRounds >= configuration.maxFailedRounds {
                throw lastFailure ?? .unavailable("\(pending.count) commands still redirected after \(attempt) rounds")
            }
            if attempt > 0 {
                counters.retries += 1
                let delay = min(0.5, configuration.backoff * Double(1 << min(attempt - 1, 10)))
                Thread.sleep(forTimeInterval: delay)
            }
            attempt += 1
            if mapIsStale {
                do {
                    try refreshTopologyLocked()
                } catch .authentication(let a, let m) {
                    throw .authentication(address: a, message: m)
                } catch {
                    lastFailure = error
                    failedRounds += 1
                    continue
                }
            }
            var unreachable = false
            var byNode: [String: [Int]] = [:]
            for i in pending {
                guard let node = asking[i] ?? route(commands[i].key) else {
                    mapIsStale = true
                    lastFailure = .noTopology("no master serves the slot of a key")
                    continue
                }
                byNode[node, default: []].append(i)
            }
            var retry: [Int] = pending.filter { i in !byNode.values.contains { $0.contains(i) } }
            for (node, indices) in byNode.sorted(by: { $0.key < $1.key }) {
                if let until = downUntil[node], until > Date() {
                    counters.skippedDown += 1
                    lastFailure = .connect(
                        address: node,
                        reason: "marked down after a failure; retried after \(configuration.downSeconds) s")
                    retry += indices
                    unreachable = true
                    continue
                }
                let replies: [RESPValue]
                do {
                    let connection = try connectionLocked(node)
                    var batch: [[[UInt8]]] = []
                    for i in indices {
                        if asking[i] != nil { batch.append([Array("ASKING".utf8)]) }
                        batch.append(commands[i].arguments)
                    }
                    replies = try connection.pipeline(batch)
                } catch .authentication(let a, let m) {
                    throw .authentication(address: a, message: m)
                } catch {
                    markDown(node)
                    mapIsStale = true
                    lastFailure = error
                    retry += indices
                    unreachable = true
                    continue
                }
                downUntil[node] = nil
                var r = 0
                for i in indices {
                    if asking[i] != nil { r += 1 }  // the reply to ASKING
                    let reply = replies[r]
                    r += 1
                    asking[i] = nil
                    if let message = reply.errorMessage {
                        if let (slot, target) = Self.redirection(message, kind: "MOVED") {
                            counters.moved += 1
                            slots[slot] = target
                            mapIsStale = true
                            retry.append(i)
                            continue
                        }
                        if let (_, target) = Self.redirection(message, kind: "ASK") {
                            counters.asked += 1
                            asking[i] = target
                            retry.append(i)
                            continue
                        }
                        if message.hasPrefix("TRYAGAIN") || message.hasPrefix("CLUSTERDOWN")
                            || message.hasPrefix("LOADING") || message.hasPrefix("MASTERDOWN")
                        {
                            lastFailure = .unavailable(message)
                            mapIsStale = mapIsStale || message.hasPrefix("CLUSTERDOWN")
                            retry.append(i)
                            continue
                        }
                        if Self.isAuthenticationError(message) {
                            throw .authentication(address: node, message: message)
                        }
                    }
                    results[i] = reply
                }
            }
            if unreachable { failedRounds += 1 }
            pending = retry.sorted()
        }
        return results.map { $0 ?? .bulk(nil) }
    }

    /// Drops `node`'s connection and leaves the node alone for `downSeconds`.
    private func markDown(_ node: String) {
        connections[node]?.close()
        connections[node] = nil
        downUntil[node] = Date().addingTimeInterval(configuration.downSeconds)
    }

    private func route(_ key: [UInt8]?) -> String? {
        guard let key else { return slots.first { $0 != nil } ?? nil }
        return slots[HashSlot.of(key)]
    }

    private func connectionLocked(_ node: String) throws(RedisError) -> RedisConnection {
        if let c = connections[node], !c.isBroken { return c }
        guard let (host, port) = Self.split(node) else { throw .connect(address: node, reason: "not host:port") }
        let c = try RedisConnection(
            host: host, port: port, credentials: configuration.credentials,
            connectTimeout: configuration.connectTimeout, ioTimeout: configuration.ioTimeout)
        if connections[node] != nil { counters.reconnects += 1 }
        connections[node] = c
        return c
    }

    /// Asks the known masters, then the seeds, for CLUSTER SLOTS; the first full answer wins.
    private func refreshTopologyLocked() throws(RedisError) {
        counters.topologyRefreshes += 1
        var candidates: [String] = []
        for s in Set(slots.compactMap { $0 }).sorted() + configuration.seeds where !candidates.contains(s) {
            candidates.append(s)
        }
        // Nodes marked down are asked last.
        let now = Date()
        candidates =
            candidates.filter { (downUntil[$0] ?? .distantPast) <= now }
            + candidates.filter { (downUntil[$0] ?? .distantPast) > now }
        var reasons: [String] = []
        // A partition can leave every node accepting connections and answering nothing: give up
        // after about two I/O timeouts rather than waiting on each node in turn.
        let deadline = Date().addingTimeInterval(2 * (configuration.connectTimeout + configuration.ioTimeout))
        for node in candidates {
            if Date() > deadline && !reasons.isEmpty {
                reasons.append("gave up after \(reasons.count) nodes")
                break
            }
            do throws(RedisError) {
                let connection = try connectionLocked(node)
                let reply = try connection.pipeline([[Array("CLUSTER".utf8), Array("SLOTS".utf8)]])[0]
                if let message = reply.errorMessage, Self.isAuthenticationError(message) {
                    throw RedisError.authentication(address: node, message: message)
                }
                guard let map = Self.parseSlots(reply, askedNode: node) else {
                    reasons.append("\(node): \(reply.errorMessage ?? "unreadable CLUSTER SLOTS reply")")
                    continue
                }
                guard map.allSatisfy({ $0 != nil }) else {
                    reasons.append("\(node): not every slot is served")
                    continue
                }
                slots = map
                mapIsStale = false
                return
            } catch .authentication(let a, let m) {
                throw .authentication(address: a, message: m)
            } catch {
                markDown(node)
                reasons.append(error.description)
            }
        }
        throw .noTopology(reasons.joined(separator: "; "))
    }

    // MARK: - Parsing

    static func isAuthenticationError(_ message: String) -> Bool {
        message.hasPrefix("NOAUTH") || message.hasPrefix("WRONGPASS") || message.hasPrefix("NOPERM")
    }

    /// "MOVED 3999 127.0.0.1:6381" -> (3999, "127.0.0.1:6381").
    static func redirection(_ message: String, kind: String) -> (Int, String)? {
        let parts = message.split(separator: " ")
        guard parts.count == 3, parts[0] == kind, let slot = Int(parts[1]), (0..<HashSlot.count).contains(slot) else {
            return nil
        }
        return (slot, String(parts[2]))
    }

    /// The slot -> master map of a CLUSTER SLOTS reply (an empty host means the node asked).
    static func parseSlots(_ reply: RESPValue, askedNode: String) -> [String?]? {
        guard case .array(let ranges?) = reply else { return nil }
        var map: [String?] = Array(repeating: nil, count: HashSlot.count)
        let askedHost = split(askedNode)?.host ?? "127.0.0.1"
        for range in ranges {
            guard case .array(let fields?) = range, fields.count >= 3,
                case .integer(let start) = fields[0], case .integer(let end) = fields[1],
                case .array(let master?) = fields[2], master.count >= 2,
                case .integer(let port) = master[1],
                0 <= start, start <= end, end < HashSlot.count
            else { return nil }
            var host = master[0].bytes.map { String(decoding: $0, as: UTF8.self) } ?? ""
            if host.isEmpty || host == "?" { host = askedHost }
            let node = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            for s in Int(start)...Int(end) { map[s] = node }
        }
        return map
    }

    static func split(_ node: String) -> (host: String, port: Int)? {
        guard let colon = node.lastIndex(of: ":"), let port = Int(node[node.index(after: colon)...]) else {
            return nil
        }
        var host = String(node[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }
}
