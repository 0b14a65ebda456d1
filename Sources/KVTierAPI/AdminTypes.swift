/// The bodies of kvtierd's admin and status endpoints (docs/protocol.md), shared by the daemon,
/// which encodes them, and kvtierctl, which decodes them.

/// `GET /healthz`.
public struct Health: Codable, Sendable, Equatable {
    public var status: String
    public var model: String
    public var queueDepth: Int
    public var running: Int
    public var sessions: Int
    public var disk: DiskHealth
    /// The remote tier's health, when one is configured (it never makes `status` degraded: the
    /// node serves from its local tiers without it).
    public var remote: DiskHealth?

    public init(
        status: String, model: String, queueDepth: Int, running: Int, sessions: Int, disk: DiskHealth,
        remote: DiskHealth? = nil
    ) {
        self.status = status
        self.model = model
        self.queueDepth = queueDepth
        self.running = running
        self.sessions = sessions
        self.disk = disk
        self.remote = remote
    }
}

/// The disk tier's health, in `/healthz` and in `/v1/tiers`.
public struct DiskHealth: Codable, Sendable, Equatable {
    /// "healthy" or "degraded".
    public var state: String
    public var reason: String?
    public var action: String?
    public var since: String?
    public var readable: Bool
    public var writeErrors: Int
    public var notice: String?

    public init(
        state: String, reason: String?, action: String?, since: String?, readable: Bool, writeErrors: Int,
        notice: String?
    ) {
        self.state = state
        self.reason = reason
        self.action = action
        self.since = since
        self.readable = readable
        self.writeErrors = writeErrors
        self.notice = notice
    }
}

/// One tier in `GET /v1/tiers` (an array of three, top to bottom).
public struct TierReport: Codable, Sendable, Equatable {
    public var tier: String
    public var capacityBytes: Int
    public var usedBytes: Int
    public var blocks: Int
    public var hits: Int
    public var misses: Int
    public var evictions: Int
    public var promotions: Int
    public var demotions: Int
    public var bytesIn: Int
    public var bytesOut: Int
    public var checksumFailures: Int
    /// Stored bytes over raw bytes (the disk tier's LZ4); nil for the memory tiers.
    public var compressionRatio: Double?
    /// The disk tier's health; nil for the memory tiers.
    public var health: DiskHealth?

    public init(
        tier: String, capacityBytes: Int, usedBytes: Int, blocks: Int, hits: Int, misses: Int, evictions: Int,
        promotions: Int, demotions: Int, bytesIn: Int, bytesOut: Int, checksumFailures: Int,
        compressionRatio: Double?, health: DiskHealth?
    ) {
        self.tier = tier
        self.capacityBytes = capacityBytes
        self.usedBytes = usedBytes
        self.blocks = blocks
        self.hits = hits
        self.misses = misses
        self.evictions = evictions
        self.promotions = promotions
        self.demotions = demotions
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
        self.checksumFailures = checksumFailures
        self.compressionRatio = compressionRatio
        self.health = health
    }
}

/// One session in `GET /v1/sessions`.
public struct SessionSummary: Codable, Sendable, Equatable {
    public var id: String
    public var owner: String
    public var tokens: Int
    public var cachedTokens: Int
    public var droppedTokens: Int

    public init(id: String, owner: String, tokens: Int, cachedTokens: Int, droppedTokens: Int) {
        self.id = id
        self.owner = owner
        self.tokens = tokens
        self.cachedTokens = cachedTokens
        self.droppedTokens = droppedTokens
    }
}

/// `GET /v1/sessions`.
public struct SessionList: Codable, Sendable, Equatable {
    public var sessions: [SessionSummary]

    public init(sessions: [SessionSummary]) { self.sessions = sessions }
}

/// `GET /v1/sessions/{id}`: the summary, where each layer's blocks are, and the conversation.
public struct SessionDetail: Codable, Sendable, Equatable {
    public struct Layer: Codable, Sendable, Equatable {
        public var layer: Int
        public var blocks: Int
        public var tokens: Int
        public var hbm: Int
        public var dram: Int
        public var disk: Int

        public init(layer: Int, blocks: Int, tokens: Int, hbm: Int, dram: Int, disk: Int) {
            self.layer = layer
            self.blocks = blocks
            self.tokens = tokens
            self.hbm = hbm
            self.dram = dram
            self.disk = disk
        }
    }

    public var id: String
    public var owner: String
    public var tokens: Int
    public var cachedTokens: Int
    public var droppedTokens: Int
    public var layers: [Layer]
    /// The conversation the session holds, oldest first (what a client resends to continue
    /// it); tokens dropped to fit the context window are not in it.
    public var messages: [APIChatMessage]

    public init(
        id: String, owner: String, tokens: Int, cachedTokens: Int, droppedTokens: Int, layers: [Layer],
        messages: [APIChatMessage]
    ) {
        self.id = id
        self.owner = owner
        self.tokens = tokens
        self.cachedTokens = cachedTokens
        self.droppedTokens = droppedTokens
        self.layers = layers
        self.messages = messages
    }
}

/// `POST /v1/hints` request and answer.
public struct HintRequest: Codable, Sendable, Equatable {
    public var upcoming: [String]

    public init(upcoming: [String]) { self.upcoming = upcoming }
}

public struct HintResponse: Codable, Sendable, Equatable {
    public var upcoming: [String]
    /// Ids the daemon has no session for (of this caller), ignored.
    public var unknown: [String]

    public init(upcoming: [String], unknown: [String]) {
        self.upcoming = upcoming
        self.unknown = unknown
    }
}

/// `POST /v1/sessions/{id}/demote` request.
public struct DemoteRequest: Codable, Sendable, Equatable {
    /// "dram" or "disk".
    public var to: String

    public init(to: String) { self.to = to }
}

/// The body of every error answer: `{"error": {"message": ..., "type": ...}}`.
public struct ErrorBody: Codable, Sendable, Equatable {
    public struct Detail: Codable, Sendable, Equatable {
        public var message: String
        public var type: String
    }

    public var error: Detail

    public init(message: String, type: String) { error = Detail(message: message, type: type) }
}

/// What the state-changing endpoints answer: `{"deleted": id}` (DELETE a session),
/// `{"demoted": id, "to": tier}` (demote), `{"flushed": true}` (flush).
public struct Acknowledgement: Codable, Sendable, Equatable {
    public var deleted: String?
    public var demoted: String?
    public var to: String?
    public var flushed: Bool?

    public init(deleted: String? = nil, demoted: String? = nil, to: String? = nil, flushed: Bool? = nil) {
        self.deleted = deleted
        self.demoted = demoted
        self.to = to
        self.flushed = flushed
    }
}
