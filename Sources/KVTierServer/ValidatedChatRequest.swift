import Foundation
import KVTierModel

/// A `POST /v1/chat/completions` body that decoded and passed every check against the limits:
/// what a turn needs, nothing of the engine's state. Decoding and validation live here, apart from
/// the turn, so that the fuzz tests run exactly this code without a model.
///
/// Every rejection is an `APIError` with status 400 whose message names the field or the limit.
struct ValidatedChatRequest: Sendable {
    let messages: [ChatMessage]
    let maxTokens: Int
    let sampling: SamplingParameters
    let stopSequences: [String]
    let stream: Bool
    /// Generation goes on past end-of-turn tokens (`ignore_eos`).
    let ignoreEndOfGeneration: Bool
    /// The session the client named (`session_id`, else the `X-Session-Id` header), if any.
    let sessionID: String?

    /// Decodes and checks `body`; `sessionHeader` is the request's `X-Session-Id`.
    init(body: [UInt8], sessionHeader: String?, limits: ServerLimits) throws(APIError) {
        let req: ChatCompletionRequest
        do {
            req = try RequestJSON.decode(ChatCompletionRequest.self, from: body)
        } catch let e as RequestJSON.TooDeep {
            throw APIError(400, "invalid_request_error", "the request body is not a valid chat completion request: \(e)")
        } catch {
            throw APIError(400, "invalid_request_error", "the request body is not a valid chat completion request: \(Self.describe(error))")
        }
        guard !req.messages.isEmpty, req.messages.last?.role == "user" else {
            throw APIError(400, "invalid_request_error", "messages must be non-empty and end with a user message")
        }
        guard req.messages.count <= limits.maxMessages else {
            throw APIError(400, "invalid_request_error", "\(req.messages.count) messages; at most \(limits.maxMessages) are accepted (server.max_messages)")
        }
        if let bad = req.messages.first(where: { !["system", "user", "assistant"].contains($0.role) }) {
            throw APIError(400, "invalid_request_error", "unknown role '\(bad.role)'; use system, user or assistant")
        }
        let maxTokens = req.max_tokens ?? 256
        guard (1...limits.maxTokens).contains(maxTokens) else {
            throw APIError(400, "invalid_request_error", "max_tokens must be between 1 and \(limits.maxTokens), got \(maxTokens)")
        }
        let stops = req.stop?.values ?? []
        guard stops.count <= 4, stops.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 256 }) else {
            throw APIError(400, "invalid_request_error", "stop takes up to 4 non-empty strings of at most 256 bytes")
        }
        let sampling = SamplingParameters(
            temperature: req.temperature ?? 0.7, topP: req.top_p ?? 1, seed: req.seed ?? UInt64.random(in: 0...UInt64.max))
        do { try sampling.validate() } catch { throw APIError(400, "invalid_request_error", error.description) }
        let explicit = req.session_id ?? sessionHeader
        if let explicit {
            guard !explicit.isEmpty, explicit.utf8.count <= 256 else {
                throw APIError(400, "invalid_request_error", "session_id must be 1 to 256 bytes")
            }
        }
        self.messages = req.messages.map { ChatMessage(role: $0.role, content: $0.content) }
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopSequences = stops
        self.stream = req.stream == true
        self.ignoreEndOfGeneration = req.ignore_eos == true
        self.sessionID = explicit
    }

    /// A decoding error in words a client can act on: the field and what was wrong with it.
    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing field '\(key.stringValue)'"
        case DecodingError.typeMismatch(_, let c): return "wrong type at '\(c.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.valueNotFound(_, let c): return "null at '\(c.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.dataCorrupted: return "malformed JSON"
        default: return "\(error)"
        }
    }
}
