/// The chat completion bodies kvtierd sends (OpenAI's shapes plus `session_id` and the
/// `kvtier` report), shared with kvtierctl, which reads them.

/// A message of a conversation.
public struct APIChatMessage: Codable, Sendable, Equatable {
    public var role: String
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// What kvtierctl sends to `POST /v1/chat/completions` (the daemon reads more fields and forms:
/// docs/protocol.md).
public struct ChatRequest: Codable, Sendable, Equatable {
    public var messages: [APIChatMessage]
    public var maxTokens: Int?
    public var temperature: Float?
    public var stream: Bool?
    public var sessionId: String?

    public init(messages: [APIChatMessage], maxTokens: Int?, temperature: Float?, stream: Bool?, sessionId: String?) {
        self.messages = messages
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.stream = stream
        self.sessionId = sessionId
    }
}

/// Token counts of a completion.
public struct Usage: Codable, Sendable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    public var totalTokens: Int

    public init(promptTokens: Int, completionTokens: Int) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.totalTokens = promptTokens + completionTokens
    }
}

/// The per-turn report every completion carries under `kvtier`: where the reused KV came from
/// and what the turn waited for.
public struct KVTierReport: Codable, Sendable, Equatable {
    public struct Hits: Codable, Sendable, Equatable {
        public var hbm: Int
        public var dram: Int
        public var disk: Int
        /// Tokens whose KV came from the remote tier (0 without one; absent from older daemons).
        public var remote: Int?

        public init(hbm: Int, dram: Int, disk: Int, remote: Int? = nil) {
            self.hbm = hbm
            self.dram = dram
            self.disk = disk
            self.remote = remote
        }
    }

    public var tokensReused: Int
    public var tokensRecomputed: Int
    public var tokensGenerated: Int
    public var hits: Hits
    /// From the request's arrival at kvtierd to its first token, every wait included (its place
    /// in the queue, `queueMs`; earlier turns' saves, `saveWaitMs`; loads; compute).
    public var ttftMs: Double
    /// Part of `ttftMs` spent queued behind other turns (absent from older daemons).
    public var queueMs: Double?
    /// Part of `ttftMs` spent waiting for earlier turns' saves and removals (absent from older daemons).
    public var saveWaitMs: Double?
    public var loadStallMs: Double
    public var saveLagMs: Double
    public var truncatedTokens: Int
    /// Blocks the session should have had but no tier held (lost in a crash, evicted from every
    /// tier, failed their checksum): recomputed in this turn.
    public var blocksRecovered: Int
    /// KV bytes read from disk, and from the remote tier, while the turn loaded its history
    /// (absent from older daemons).
    public var diskBytesRead: Int?
    public var remoteBytesRead: Int?

    public init(
        tokensReused: Int, tokensRecomputed: Int, tokensGenerated: Int, hits: Hits, ttftMs: Double, loadStallMs: Double,
        saveLagMs: Double, truncatedTokens: Int, blocksRecovered: Int, queueMs: Double? = nil,
        saveWaitMs: Double? = nil,
        diskBytesRead: Int? = nil, remoteBytesRead: Int? = nil
    ) {
        self.diskBytesRead = diskBytesRead
        self.remoteBytesRead = remoteBytesRead
        self.queueMs = queueMs
        self.saveWaitMs = saveWaitMs
        self.tokensReused = tokensReused
        self.tokensRecomputed = tokensRecomputed
        self.tokensGenerated = tokensGenerated
        self.hits = hits
        self.ttftMs = ttftMs
        self.loadStallMs = loadStallMs
        self.saveLagMs = saveLagMs
        self.truncatedTokens = truncatedTokens
        self.blocksRecovered = blocksRecovered
    }
}

/// Log probabilities of a choice's tokens (`logprobs: true`), as OpenAI reports them.
public struct ChoiceLogprobs: Codable, Sendable, Equatable {
    public struct Top: Codable, Sendable, Equatable {
        public var token: String
        public var logprob: Double
        public var bytes: [Int]

        public init(token: String, logprob: Double, bytes: [Int]) {
            self.token = token
            self.logprob = logprob
            self.bytes = bytes
        }
    }

    public struct Token: Codable, Sendable, Equatable {
        public var token: String
        public var logprob: Double
        public var bytes: [Int]
        /// The `top_logprobs` most likely tokens at this position, most likely first.
        public var topLogprobs: [Top]

        public init(token: String, logprob: Double, bytes: [Int], topLogprobs: [Top]) {
            self.token = token
            self.logprob = logprob
            self.bytes = bytes
            self.topLogprobs = topLogprobs
        }
    }

    public var content: [Token]

    public init(content: [Token]) { self.content = content }
}

/// The answer to a completion that was not streamed.
public struct ChatCompletion: Codable, Sendable, Equatable {
    public struct Choice: Codable, Sendable, Equatable {
        public var index: Int
        public var message: APIChatMessage
        public var finishReason: String
        public var logprobs: ChoiceLogprobs?
        /// With `n` > 1: the session this choice's KV is kept in (choice 0's is the request's
        /// `session_id`) and its turn's report.
        public var sessionId: String?
        public var kvtier: KVTierReport?

        public init(index: Int, message: APIChatMessage, finishReason: String, logprobs: ChoiceLogprobs? = nil) {
            self.index = index
            self.message = message
            self.finishReason = finishReason
            self.logprobs = logprobs
        }
    }

    public var id: String
    public var object = "chat.completion"
    public var created: Int
    public var model: String
    public var choices: [Choice]
    public var usage: Usage
    public var sessionId: String
    public var kvtier: KVTierReport

    public init(
        id: String, created: Int, model: String, choices: [Choice], usage: Usage, sessionId: String,
        kvtier: KVTierReport
    ) {
        self.id = id
        self.created = created
        self.model = model
        self.choices = choices
        self.usage = usage
        self.sessionId = sessionId
        self.kvtier = kvtier
    }
}

/// One server-sent event of a streamed completion (`chat.completion.chunk`); the last one
/// carries the finish reason, usage, session id and report.
public struct ChatCompletionChunk: Codable, Sendable, Equatable {
    public struct Delta: Codable, Sendable, Equatable {
        /// "assistant" in the first chunk of a reply, absent after.
        public var role: String?
        public var content: String?

        public init(role: String? = nil, content: String?) {
            self.role = role
            self.content = content
        }
    }

    public struct Choice: Codable, Sendable, Equatable {
        public var index: Int
        public var delta: Delta
        public var finishReason: String?
        public var logprobs: ChoiceLogprobs?

        public init(index: Int, delta: Delta, finishReason: String?, logprobs: ChoiceLogprobs? = nil) {
            self.index = index
            self.delta = delta
            self.finishReason = finishReason
            self.logprobs = logprobs
        }
    }

    public var id: String
    public var object = "chat.completion.chunk"
    public var created: Int
    public var model: String
    public var choices: [Choice]
    public var usage: Usage?
    public var sessionId: String?
    public var kvtier: KVTierReport?

    public init(id: String, created: Int, model: String, delta: Delta, finish: String?) {
        self.id = id
        self.created = created
        self.model = model
        self.choices = [Choice(index: 0, delta: delta, finishReason: finish)]
    }

    /// The chunk `stream_options.include_usage` asks for: no choices, the usage.
    public init(id: String, created: Int, model: String, usage: Usage) {
        self.id = id
        self.created = created
        self.model = model
        self.choices = []
        self.usage = usage
    }
}
