import Foundation
import KVTierAPI
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

extension KVTierReport {
    init(_ r: TurnReport) {
        self.init(
            tokensReused: r.tokensReused, tokensRecomputed: r.tokensRecomputed, tokensGenerated: r.tokensGenerated,
            hits: Hits(hbm: r.hitsHBM, dram: r.hitsDRAM, disk: r.hitsDisk), ttftMs: r.ttftMs,
            loadStallMs: r.loadStallMs,
            saveLagMs: r.saveLagMs, truncatedTokens: r.truncatedTokens, blocksRecovered: r.blocksRecovered)
    }
}

/// An error answer: its status, the `ErrorBody` it sends, and a Retry-After for 429 and 503.
struct APIError: Encodable, Error {
    let error: ErrorBody.Detail
    let status: Int
    /// Sent as the Retry-After header (429, 503).
    var retryAfterSeconds: Int?

    init(_ status: Int, _ type: String, _ message: String, retryAfter: Int? = nil) {
        self.status = status
        self.error = ErrorBody(message: message, type: type).error
        self.retryAfterSeconds = retryAfter
    }

    /// Encodes as `ErrorBody`: only `error` goes on the wire.
    func encode(to encoder: Encoder) throws {
        try ErrorBody(message: error.message, type: error.type).encode(to: encoder)
    }

    /// The JSON body, for the handlers that answer below the API service.
    var body: [UInt8] { (try? APIJSON.encode(self)) ?? [] }
}
