import Foundation
import KVTierEngine
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
    /// `stream_options.include_usage`: a last chunk with usage and no choices.
    let includeUsage: Bool
    /// Generation goes on past end-of-turn tokens (`ignore_eos`).
    let ignoreEndOfGeneration: Bool
    /// `kvtier.next_turn_in_seconds`: the placement hint for the session's KV.
    let nextTurnInSeconds: Double?
    /// `logprobs`: alternatives per token (`top_logprobs`), nil when not asked for.
    let logprobs: Int?
    /// `n`: choices to generate, each a turn of its own sharing the prompt's KV.
    let choices: Int
    /// The session the client named (`session_id`, else the `X-Session-Id` header), if any.
    let sessionID: String?

    /// `/v1/completions`: the prompt is continued as plain text (no chat template), and the
    /// answer is a `text_completion`.
    let isTextCompletion: Bool

    /// Decodes and checks a chat completion `body`; `sessionHeader` is the request's `X-Session-Id`.
    init(body: [UInt8], sessionHeader: String?, limits: ServerLimits) throws(APIError) {
        let req: ChatCompletionRequest = try Self.decode(body, as: "chat completion")
        guard !req.messages.isEmpty, req.messages.last?.role == "user" else {
            throw APIError(400, "invalid_request_error", "messages: must be non-empty and end with a user message")
        }
        guard req.messages.count <= limits.maxMessages else {
            throw APIError(
                400, "invalid_request_error",
                "messages: \(req.messages.count) messages; at most \(limits.maxMessages) are accepted "
                    + "(server.max_messages)"
            )
        }
        try self.init(
            messages: req.messages.map { ChatMessage(role: $0.role, content: $0.content) }, common: req.common,
            logprobs: req.logprobs, isTextCompletion: false, sessionHeader: sessionHeader, limits: limits)
    }

    /// Decodes and checks a `/v1/completions` `body`.
    init(textCompletionBody body: [UInt8], sessionHeader: String?, limits: ServerLimits) throws(APIError) {
        let req: TextCompletionRequest = try Self.decode(body, as: "text completion")
        try self.init(
            messages: [.completionPrompt(req.prompt)], common: req.common, logprobs: nil, isTextCompletion: true,
            sessionHeader: sessionHeader, limits: limits)
    }

    private static func decode<T: Decodable>(_ body: [UInt8], as what: String) throws(APIError) -> T {
        do {
            return try RequestJSON.decode(T.self, from: body)
        } catch let e as RequestJSON.TooDeep {
            throw APIError(400, "invalid_request_error", "the request body is not a valid \(what) request: \(e)")
        } catch {
            throw APIError(400, "invalid_request_error", Self.describe(error))
        }
    }

    /// The checks both endpoints share, against the limits.
    private init(
        messages: [ChatMessage], common: ChatCompletionRequest.Common, logprobs: Int?, isTextCompletion: Bool,
        sessionHeader: String?, limits: ServerLimits
    ) throws(APIError) {
        let maxTokens = common.maxTokens ?? 256
        guard (1...limits.maxTokens).contains(maxTokens) else {
            throw APIError(
                400, "invalid_request_error",
                "max_completion_tokens (or max_tokens) must be between 1 and \(limits.maxTokens), got \(maxTokens)")
        }
        let stops = common.stop
        guard stops.count <= 4, stops.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 256 }) else {
            throw APIError(400, "invalid_request_error", "stop: up to 4 non-empty strings of at most 256 bytes")
        }
        let sampling = SamplingParameters(
            temperature: common.temperature ?? 0.7, topP: common.topP ?? 1,
            seed: common.seed ?? UInt64.random(in: 0...UInt64.max))
        do { try sampling.validate() } catch { throw APIError(400, "invalid_request_error", error.description) }
        let explicit = common.sessionID ?? sessionHeader
        if let explicit {
            guard !explicit.isEmpty, explicit.utf8.count <= 256 else {
                throw APIError(400, "invalid_request_error", "session_id: must be 1 to 256 bytes")
            }
        }
        self.messages = messages
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopSequences = stops
        self.stream = common.stream
        self.includeUsage = common.includeUsage
        self.ignoreEndOfGeneration = common.ignoreEOS
        self.sessionID = explicit
        self.logprobs = logprobs
        self.nextTurnInSeconds = common.nextTurnInSeconds
        self.isTextCompletion = isTextCompletion
        self.choices = common.choices
    }

    /// A decoding error in words a client can act on: the field, as a JSON path
    /// (`messages[0].content`), and what was wrong with it; never a Swift type.
    static func describe(_ error: Error) -> String {
        func path(_ c: DecodingError.Context) -> String { ChatCompletionRequest.jsonPath(c.codingPath) }
        switch error {
        case let e as ChatCompletionRequest.FieldError: return e.description
        case DecodingError.keyNotFound(let key, let c):
            return "\(path(.init(codingPath: c.codingPath + [key], debugDescription: ""))): missing"
        case DecodingError.typeMismatch(let type, let c): return "\(path(c)): expected \(jsonType(type))"
        case DecodingError.valueNotFound(let type, let c): return "\(path(c)): expected \(jsonType(type)), got null"
        case DecodingError.dataCorrupted(let c) where !c.codingPath.isEmpty: return "\(path(c)): \(c.debugDescription)"
        case DecodingError.dataCorrupted: return "the request body is not valid JSON"
        default: return "the request body is not a valid chat completion request"
        }
    }

    /// The JSON name of what a Swift type decodes from.
    private static func jsonType(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Bool.Type: return "true or false"
        case is Int.Type, is UInt64.Type: return "an integer"
        case is Float.Type, is Double.Type: return "a number"
        default:
            let name = "\(type)"
            return name.hasPrefix("Array") ? "a list" : name.hasPrefix("Dictionary") ? "an object" : "an object"
        }
    }
}
