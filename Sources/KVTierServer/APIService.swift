import Dispatch
import Foundation
import KVTierAPI
import KVTierEngine
import KVTierModel
import KVTierStore
import Logging
import NIOConcurrencyHelpers

/// The endpoints, independent of HTTP plumbing: a request in, a status and JSON body out.
///
/// Threads: requests arrive from the event loop and are handled on `requests` (a serial queue,
/// so nothing here blocks the loop), except the admin calls that may wait on a turn or on the
/// disk (deleting a session waits for its running turn; flush and demote write to disk), which
/// run on `slowRequests`, so that health checks, metrics and new turns never wait behind them.
/// Chat turns go to the engine's `TurnScheduler`, which runs them in the batch on threads of
/// their own; their responses are written from the turn's thread. `limits`, `turnSeconds` and
/// `stopping` are lock-protected boxes.
public final class APIService: Sendable {
    public struct Request: Sendable {
        public var method: String
        public var path: String
        public var headers: [String: String]
        public var body: [UInt8]
        public var peer: Peer
        /// True once the client has gone away (a running turn for it is cancelled).
        public var isClientGone: @Sendable () -> Bool
        /// When the request was complete (uptime nanoseconds), for the request log line.
        public var received = DispatchTime.now().uptimeNanoseconds

        public init(
            method: String, path: String, headers: [String: String] = [:], body: [UInt8] = [], peer: Peer,
            isClientGone: @escaping @Sendable () -> Bool = { false }
        ) {
            self.method = method
            self.path = path
            self.headers = headers
            self.body = body
            self.peer = peer
            self.isClientGone = isClientGone
        }
    }

    /// Where a streaming response goes: `start` once, then `send` per event, then `end`.
    public struct StreamSink: Sendable {
        public var start: @Sendable (_ status: Int, _ contentType: String) -> Void
        public var send: @Sendable (_ bytes: [UInt8]) -> Void
        public var end: @Sendable () -> Void
    }

    public struct Response: Sendable {
        public var status: Int
        public var body: [UInt8]
        public var contentType = "application/json"
        public var headers: [(String, String)] = []
    }

    let engine: ChatEngine
    let scheduler: TurnScheduler
    let modelName: String
    let access: AccessPolicy
    public let limits: NIOLockedValueBox<ServerLimits>
    public let metrics: ServerMetrics
    /// One info line per answered request.
    let logger: Logger
    let requests = DispatchQueue(label: "kvtier.server.requests")
    let slowRequests = DispatchQueue(label: "kvtier.server.slow-requests")
    /// Recent turn duration in seconds (moving average), for Retry-After.
    let turnSeconds = NIOLockedValueBox<Double>(2)
    /// Set by `beginShutdown`: new turns get 503.
    let stopping = NIOLockedValueBox(false)
    /// When this daemon started (Unix seconds): the model's `created` in `/v1/models`.
    let started = Int(Date().timeIntervalSince1970)

    public init(
        engine: ChatEngine, modelName: String, access: AccessPolicy = AccessPolicy(),
        limits: ServerLimits = ServerLimits(),
        metrics: ServerMetrics = ServerMetrics(), logger: Logger = Logger(label: "kvtierd")
    ) {
        self.logger = logger
        self.engine = engine
        self.scheduler = TurnScheduler(engine: engine)
        self.modelName = modelName
        self.access = access
        self.limits = NIOLockedValueBox(limits)
        self.metrics = metrics
    }

    /// Shutdown, first step: new turns are refused with 503 and waiting ones are failed with it;
    /// the running turn finishes. Returns the number of waiting turns failed.
    @discardableResult
    public func beginShutdown() -> Int {
        stopping.withLockedValue { $0 = true }
        return scheduler.cancelPending(
            with: APIError(503, "unavailable", "kvtierd is shutting down; retry after it restarts"))
    }

    /// Waits for queued requests and the running turns.
    public func drain() {
        requests.sync {}
        slowRequests.sync {}
        scheduler.drain()
    }

    /// Requests that may wait on a running turn or on disk writes.
    static func isSlow(_ r: Request) -> Bool {
        switch r.method {
        case "DELETE": return r.path.hasPrefix("/v1/sessions/")
        case "POST": return r.path == "/v1/flush" || (r.path.hasPrefix("/v1/sessions/") && r.path.hasSuffix("/demote"))
        default: return false
        }
    }

    /// Handles a request; `respond` gets the response, or (a streamed chat completion) `stream`
    /// gets the events and `respond` is not called.
    public func handle(_ r: Request, stream: StreamSink, respond: @escaping @Sendable (Response) -> Void) {
        (Self.isSlow(r) ? slowRequests : requests).async { [self] in
            let counted: @Sendable (Response) -> Void = { [self] response in
                answered(r, status: response.status)
                respond(response)
            }
            do {
                if r.method == "POST", r.path == "/v1/chat/completions" || r.path == "/v1/completions" {
                    try chatCompletion(r, stream: stream, respond: counted)
                } else {
                    counted(try route(r))
                }
            } catch {
                counted(errorResponse(error))
            }
        }
    }

    /// A request was answered with `status` (for a stream: when it ended): counted in the
    /// metrics, and logged at info level with its method, path, status, peer and duration.
    func answered(_ r: Request, status: Int) {
        metrics.response(status: status)
        let ms = Double(DispatchTime.now().uptimeNanoseconds &- r.received) / 1e6
        logger.info(
            "request",
            metadata: [
                "method": "\(r.method)", "path": "\(r.path)", "status": "\(status)", "peer": "\(r.peer.namespace)",
                "ms": "\((ms * 10).rounded() / 10)",
            ])
    }

    /// Synchronous form for everything but chat completions (tests, tools).
    public func handle(_ r: Request) -> Response {
        do { return try route(r) } catch { return errorResponse(error) }
    }

    private func route(_ r: Request) throws -> Response {
        switch (r.method, r.path) {
        case ("GET", "/healthz"):
            // 200 while the daemon answers chats, degraded or not: a degraded disk tier means
            // recomputing, not refusing (docs/protocol.md).
            let h = engine.store.diskHealth
            return try json(
                200,
                Health(
                    status: h.isHealthy ? "ok" : "degraded", model: modelName, queueDepth: scheduler.depth,
                    running: scheduler.running, sessions: engine.sessionIDs.count, disk: DiskHealth(h),
                    remote: engine.store.remote.flatMap { $0.stats.tierStats.health.map(DiskHealth.init) }))
        case ("GET", let path) where path.hasPrefix("/v1/models/"):
            struct Model: Encodable {
                let id: String
                let object = "model"
                let owned_by = "kvtier"
                let created: Int
            }
            let id = String(path.dropFirst("/v1/models/".count)).removingPercentEncoding ?? ""
            guard id == modelName else {
                throw APIError(404, "model_not_found", "no model '\(id)'; this kvtierd serves '\(modelName)'")
            }
            return try json(200, Model(id: modelName, created: started))
        case ("GET", "/v1/models"):
            struct Model: Encodable {
                let id: String
                let object = "model"
                let owned_by = "kvtier"
                let created: Int
            }
            struct List: Encodable {
                let object = "list"
                let data: [Model]
            }
            return try json(200, List(data: [Model(id: modelName, created: started)]))
        case ("GET", "/metrics"):
            let text = metrics.exposition(
                tiers: engine.store.stats.tiers, queueDepth: scheduler.depth, running: scheduler.running,
                batch: engine.executor.counters)
            return Response(status: 200, body: text, contentType: "text/plain; version=0.0.4; charset=utf-8")
        case ("GET", "/v1/tiers"):
            return try json(200, engine.store.stats.tiers.map(TierReport.init))
        case ("GET", "/v1/sessions"):
            let list = engine.sessionIDs.filter { access.canSee($0, peer: r.peer) }.compactMap { stored in
                engine.sessionSummary(stored).map {
                    SessionSummary(
                        id: access.visibleID(stored, for: r.peer), owner: engine.sessionOwner(stored) ?? "",
                        tokens: $0.tokens,
                        cachedTokens: $0.kv, droppedTokens: $0.dropped)
                }
            }
            return try json(200, SessionList(sessions: list))
        case ("POST", "/v1/flush"):
            try requireAdmin(r)
            try engine.store.flush()
            return try json(200, Acknowledgement(flushed: true))
        case ("POST", "/v1/hints"):
            try requireAdmin(r)
            guard let h = try? RequestJSON.decode(HintRequest.self, from: r.body) else {
                throw APIError(400, "invalid_request_error", "expected {\"upcoming\": [session ids]}")
            }
            let known = Set(engine.sessionIDs)
            let resolved = h.upcoming.compactMap { access.resolve($0, for: r.peer, exists: known.contains) }
            scheduler.hint(upcoming: resolved)
            for s in resolved { engine.prefetch(session: s) }
            let unknown = h.upcoming.filter { access.resolve($0, for: r.peer, exists: known.contains) == nil }
            return try json(
                200, HintResponse(upcoming: resolved.map { access.visibleID($0, for: r.peer) }, unknown: unknown))
        case (_, let path) where path.hasPrefix("/v1/sessions/"):
            return try sessionEndpoint(r)
        case (_, "/healthz"), (_, "/v1/models"), (_, "/metrics"), (_, "/v1/chat/completions"), (_, "/v1/completions"),
            (_, "/v1/tiers"),
            (_, "/v1/sessions"), (_, "/v1/flush"), (_, "/v1/hints"):
            throw APIError(405, "invalid_request_error", "method \(r.method) is not allowed on \(r.path)")
        default:
            throw APIError(404, "not_found", "no endpoint \(r.method) \(r.path); see docs/protocol.md")
        }
    }

    /// `/v1/sessions/{id}` (GET, DELETE) and `/v1/sessions/{id}/demote` (POST).
    private func sessionEndpoint(_ r: Request) throws -> Response {
        let rest = r.path.dropFirst("/v1/sessions/".count).split(separator: "/", omittingEmptySubsequences: false).map(
            String.init)
        guard let rawID = rest.first, let id = rawID.removingPercentEncoding, !id.isEmpty else {
            throw APIError(404, "not_found", "no session id in \(r.path)")
        }
        let known = Set(engine.sessionIDs)
        guard let stored = access.resolve(id, for: r.peer, exists: known.contains),
            let summary = engine.sessionSummary(stored)
        else {
            throw APIError(404, "not_found", "no session '\(id)'")
        }
        switch (r.method, rest.count > 1 ? rest[1] : nil) {
        case ("GET", nil):
            let placement = engine.placement(of: stored)
            let layers = placement.layers.enumerated().map { l, blocks in
                SessionDetail.Layer(
                    layer: l, blocks: blocks.count, tokens: blocks.reduce(0) { $0 + $1.tokens.count },
                    hbm: blocks.filter { $0.tiers.contains(.hbm) }.count,
                    dram: blocks.filter { $0.tiers.contains(.dram) }.count,
                    disk: blocks.filter { $0.tiers.contains(.disk) }.count)
            }
            return try json(
                200,
                SessionDetail(
                    id: id, owner: engine.sessionOwner(stored) ?? "", tokens: summary.tokens, cachedTokens: summary.kv,
                    droppedTokens: summary.dropped, layers: layers,
                    messages: engine.sessionMessages(stored).map { APIChatMessage(role: $0.role, content: $0.content) })
            )
        case ("DELETE", nil):
            // Owners may drop their own sessions; dropping another's needs an admin.
            if !stored.hasPrefix(r.peer.namespace + ":") { try requireAdmin(r) }
            try engine.deleteSession(stored)
            return try json(200, Acknowledgement(deleted: id))
        case ("POST", "demote"?):
            try requireAdmin(r)
            guard let d = try? RequestJSON.decode(DemoteRequest.self, from: r.body), let tier = Tier(rawValue: d.to),
                tier != .hbm
            else {
                throw APIError(400, "invalid_request_error", "expected {\"to\": \"dram\"} or {\"to\": \"disk\"}")
            }
            for ns in engine.storeNamespaces(of: stored) { try engine.store.demote(session: ns, to: tier) }
            return try json(200, Acknowledgement(demoted: id, to: tier.rawValue))
        default:
            throw APIError(405, "invalid_request_error", "method \(r.method) is not allowed on \(r.path)")
        }
    }

    func requireAdmin(_ r: Request) throws {
        guard access.isAdmin(r.peer) else {
            let who: String
            switch r.peer {
            case .local(let c): who = "uid \(c.uid)"
            case .tcp: who = "a TCP client"
            }
            throw APIError(
                403, "permission_denied",
                "\(r.method) \(r.path) changes the daemon's state and needs root, kvtierd's user or the admin group "
                    + "(server.admin_group); \(who) is none of these"
            )
        }
    }

    func errorResponse(_ error: Error) -> Response {
        let e = apiError(error)
        var response = (try? json(e.status, e)) ?? Response(status: 500, body: [])
        if let retry = e.retryAfterSeconds { response.headers.append(("Retry-After", String(retry))) }
        return response
    }

    /// The API's error for any failure: its status, type and message.
    func apiError(_ error: Error) -> APIError {
        var e = (error as? APIError) ?? APIError(500, "server_error", "\(error)")
        if let engine = error as? EngineError {
            switch engine {
            case .clientGone, .cancelledDuringPrompt:
                // Nobody reads this (the client is gone); 499 keeps such turns apart from errors in metrics.
                e = APIError(499, "cancelled", engine.description)
            case .loadKeepsFailing:
                break
            }
        }
        if case .disk(let d)? = error as? StoreError {
            switch d {
            case .unavailable, .noSpace, .io, .directoryNotWritable, .locked, .damaged:
                // An admin write to a degraded disk tier (flush, demote): the daemon is fine,
                // the disk is not; retry when /healthz says "ok".
                e = APIError(503, "unavailable", d.description)
            case .full, .invalidBlock, .closed:
                break
            }
        }
        return e
    }

    func json<T: Encodable>(_ status: Int, _ value: T) throws -> Response {
        Response(status: status, body: try APIJSON.encode(value))
    }
}

extension DiskHealth {
    init(_ h: DiskTierHealth) {
        self.init(
            state: h.state.rawValue, reason: h.reason, action: h.action, since: h.since, readable: h.readable,
            writeErrors: h.writeErrors, notice: h.notice)
    }
}

extension TierReport {
    init(_ t: TierStats) {
        self.init(
            tier: t.tier, capacityBytes: t.capacityBytes, usedBytes: t.usedBytes, blocks: t.blocks, hits: t.hits,
            misses: t.misses, evictions: t.evictions, promotions: t.promotions, demotions: t.demotions,
            bytesIn: t.bytesIn,
            bytesOut: t.bytesOut, checksumFailures: t.checksumFailures, compressionRatio: t.compressionRatio,
            health: t.health.map(DiskHealth.init))
    }
}
