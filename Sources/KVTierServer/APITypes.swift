import Foundation
import KVTierEngine
import KVTierModel

/// `POST /v1/chat/completions` request (OpenAI's shape plus `session_id`).
struct ChatCompletionRequest: Decodable {
    struct Message: Decodable {
        let role: String
        let content: String
    }
    let model: String?
    let messages: [Message]
    let max_tokens: Int?
    let temperature: Float?
    let top_p: Float?
    let seed: UInt64?
    let stream: Bool?
    let stop: StopSequences?
    let session_id: String?
    /// Keep generating past the model's end-of-turn token, up to max_tokens (llama-server's and
    /// vLLM's name for it; benchmarks use it for replies of a set length).
    let ignore_eos: Bool?
}

/// OpenAI's `stop`: a string or an array of strings.
struct StopSequences: Decodable {
    let values: [String]

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let one = try? c.decode(String.self) {
            values = [one]
        } else {
            values = try c.decode([String].self)
        }
    }
}

/// `POST /v1/chat/completions` response.
struct ChatCompletionResponse: Encodable {
    struct Choice: Encodable {
        struct Message: Encodable {
            let role: String
            let content: String
        }
        let index: Int
        let message: Message
        let finish_reason: String
    }
    struct Usage: Encodable {
        let prompt_tokens: Int
        let completion_tokens: Int
        let total_tokens: Int
    }
    let id: String
    let object = "chat.completion"
    let created: Int
    let model: String
    let choices: [Choice]
    let usage: Usage
    let session_id: String
    let kvtier: KVTierReport
}

/// The per-turn report every completion carries.
struct KVTierReport: Encodable {
    struct Hits: Encodable {
        let hbm: Int
        let dram: Int
        let disk: Int
    }
    let tokens_reused: Int
    let tokens_recomputed: Int
    let tokens_generated: Int
    let hits: Hits
    let ttft_ms: Double
    let load_stall_ms: Double
    let save_lag_ms: Double
    let truncated_tokens: Int
    /// Blocks the session should have had but no tier held (lost in a crash, evicted from every
    /// tier, failed their checksum): recomputed in this turn.
    let blocks_recovered: Int

    init(_ r: TurnReport) {
        tokens_reused = r.tokensReused
        tokens_recomputed = r.tokensRecomputed
        tokens_generated = r.tokensGenerated
        hits = Hits(hbm: r.hitsHBM, dram: r.hitsDRAM, disk: r.hitsDisk)
        ttft_ms = r.ttftMs
        load_stall_ms = r.loadStallMs
        save_lag_ms = r.saveLagMs
        truncated_tokens = r.truncatedTokens
        blocks_recovered = r.blocksRecovered
    }
}

/// OpenAI-style error body.
struct APIError: Encodable, Error {
    struct Body: Encodable {
        let message: String
        let type: String
    }
    let error: Body
    let status: Int
    /// Sent as the Retry-After header (429, 503).
    var retryAfterSeconds: Int?

    init(_ status: Int, _ type: String, _ message: String, retryAfter: Int? = nil) {
        self.status = status
        self.error = Body(message: message, type: type)
        self.retryAfterSeconds = retryAfter
    }

    enum CodingKeys: String, CodingKey { case error }

    /// The JSON body, for the handlers that answer below the API service.
    var body: [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return (try? Array(enc.encode(self))) ?? []
    }
}

/// One server-sent event of a streamed completion (`chat.completion.chunk`).
struct StreamChunk: Encodable {
    struct Delta: Encodable {
        let content: String?
    }
    struct Choice: Encodable {
        let index: Int
        let delta: Delta
        let finish_reason: String?
    }
    let id: String
    let object = "chat.completion.chunk"
    let created: Int
    let model: String
    let choices: [Choice]
    var usage: ChatCompletionResponse.Usage?
    var session_id: String?
    var kvtier: KVTierReport?

    init(id: String, created: Int, model: String, delta: Delta, finish: String?) {
        self.id = id
        self.created = created
        self.model = model
        self.choices = [Choice(index: 0, delta: delta, finish_reason: finish)]
    }
}
