import Foundation

/// A `POST /v1/chat/completions` body as current OpenAI SDKs send it, plus `session_id` and
/// `ignore_eos`. It decodes every form the API allows for what kvtierd can honour (content as a
/// string, a list of text parts, or null on an assistant message; `max_completion_tokens` or
/// `max_tokens`; `developer` messages), and refuses with the field's JSON path what it cannot
/// (tools, structured output, images, `n` > 1), rather than answering 200 and
/// ignoring it. Checks against the limits are `ValidatedChatRequest`'s.
struct ChatCompletionRequest: Decodable {
    struct Message {
        /// "system", "user" or "assistant" ("developer" is read as "system").
        let role: String
        /// Text parts joined; "" for an assistant message whose content is null.
        let content: String
    }

    let model: String?
    let messages: [Message]
    /// The fields shared with `/v1/completions`.
    let common: Common
    /// `logprobs: true`: the number of alternatives per token (`top_logprobs`, 0 to 20); nil when
    /// not asked for.
    let logprobs: Int?

    /// A field kvtierd cannot honour, or a value of the wrong shape: `path` in JSON terms
    /// (`messages[0].content`).
    struct FieldError: Error, CustomStringConvertible {
        let path: String
        let message: String
        var description: String { "\(path): \(message)" }
    }

    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// `messages[0].content` for a coding path.
    static func jsonPath(_ path: [CodingKey]) -> String {
        var out = ""
        for k in path {
            if let i = k.intValue {
                out += "[\(i)]"
            } else {
                out += out.isEmpty ? k.stringValue : "." + k.stringValue
            }
        }
        return out.isEmpty ? "the body" : out
    }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        func fail(_ key: String, _ message: String) -> FieldError { FieldError(path: key, message: message) }
        /// True when `key` is present with a value other than null.
        func present(_ key: String) throws -> Bool {
            guard c.contains(Key(key)) else { return false }
            return try !c.decodeNil(forKey: Key(key))
        }

        // What kvtierd cannot do is refused by name, never silently dropped.
        for key in ["tools", "functions"] where try present(key) {
            if let list = try? c.decode([AnyJSON].self, forKey: Key(key)), list.isEmpty { continue }
            throw fail(key, "kvtierd has no tool calling; leave it out")
        }
        for key in ["tool_choice", "function_call"] where try present(key) {
            if let choice = try? c.decode(String.self, forKey: Key(key)), choice == "none" { continue }
            throw fail(key, "kvtierd has no tool calling; leave it out or send \"none\"")
        }
        if try present("response_format") {
            struct Format: Decodable { let type: String }
            let format = try c.decode(Format.self, forKey: Key("response_format"))
            guard format.type == "text" else {
                throw fail(
                    "response_format.type",
                    "'\(format.type)' is not supported: kvtierd has no structured output; only \"text\"")
            }
        }
        let wantsLogprobs = try present("logprobs") && c.decode(Bool.self, forKey: Key("logprobs"))
        if try present("top_logprobs") {
            let top = try c.decode(Int.self, forKey: Key("top_logprobs"))
            guard (0...20).contains(top) else { throw fail("top_logprobs", "must be 0 to 20, got \(top)") }
            guard wantsLogprobs else { throw fail("top_logprobs", "needs \"logprobs\": true") }
            logprobs = top
        } else {
            logprobs = wantsLogprobs ? 0 : nil
        }
        if try present("modalities") {
            let m = try c.decode([String].self, forKey: Key("modalities"))
            guard m.allSatisfy({ $0 == "text" }) else {
                throw fail("modalities", "this model reads and writes text only")
            }
        }
        for key in ["audio", "prediction", "web_search_options"] where try present(key) {
            throw fail(key, "not supported by kvtierd; leave it out")
        }

        model = try c.decodeIfPresent(String.self, forKey: Key("model"))
        guard c.contains(Key("messages")) else { throw fail("messages", "missing: a chat needs at least one message") }
        var list = try c.nestedUnkeyedContainer(forKey: Key("messages"))
        var messages: [Message] = []
        while !list.isAtEnd {
            let index = list.currentIndex
            let m = try list.nestedContainer(keyedBy: Key.self)
            messages.append(try Self.message(m, path: "messages[\(index)]"))
        }
        self.messages = messages
        common = try Self.common(c, defaultMaxTokens: nil)
    }

    /// The fields `/v1/chat/completions` and `/v1/completions` share, with their checks.
    struct Common {
        /// `max_completion_tokens`, else `max_tokens`.
        var maxTokens: Int?
        var temperature: Float?
        var topP: Float?
        var seed: UInt64?
        var stream: Bool
        /// `stream_options.include_usage`: a last chunk with `usage` and no choices.
        var includeUsage: Bool
        var stop: [String]
        var sessionID: String?
        /// `kvtier.next_turn_in_seconds`: when the client expects the session's next turn (a
        /// placement hint: a far one writes the session through to disk at once).
        var nextTurnInSeconds: Double?
        /// Keep generating past the model's end-of-turn token, up to the token limit (llama-server's
        /// and vLLM's name for it; benchmarks use it for replies of a set length).
        var ignoreEOS: Bool
        /// `n`: how many choices to generate for the one prompt.
        var choices = 1
    }

    /// The most choices (`n`) one request may ask for: each is a turn of its own.
    static let maxChoices = 16

    static func common(_ c: KeyedDecodingContainer<Key>, defaultMaxTokens: Int?) throws -> Common {
        func fail(_ key: String, _ message: String) -> FieldError { FieldError(path: key, message: message) }
        func present(_ key: String) throws -> Bool {
            guard c.contains(Key(key)) else { return false }
            return try !c.decodeNil(forKey: Key(key))
        }
        for key in ["frequency_penalty", "presence_penalty"] where try present(key) {
            let v = try c.decode(Double.self, forKey: Key(key))
            guard v == 0 else { throw fail(key, "penalties are not supported; only 0") }
        }
        if try present("logit_bias") {
            let bias = try c.decode([String: Double].self, forKey: Key("logit_bias"))
            guard bias.isEmpty else { throw fail("logit_bias", "not supported; leave it out") }
        }
        var out = Common(stream: false, includeUsage: false, stop: [], ignoreEOS: false)
        out.maxTokens =
            try c.decodeIfPresent(Int.self, forKey: Key("max_completion_tokens"))
            ?? c.decodeIfPresent(Int.self, forKey: Key("max_tokens")) ?? defaultMaxTokens
        out.temperature = try c.decodeIfPresent(Float.self, forKey: Key("temperature"))
        out.topP = try c.decodeIfPresent(Float.self, forKey: Key("top_p"))
        out.seed = try c.decodeIfPresent(UInt64.self, forKey: Key("seed"))
        out.stream = try c.decodeIfPresent(Bool.self, forKey: Key("stream")) ?? false
        struct StreamOptions: Decodable { let include_usage: Bool? }
        out.includeUsage =
            try c.decodeIfPresent(StreamOptions.self, forKey: Key("stream_options"))?.include_usage ?? false
        if try present("stop") {
            if let one = try? c.decode(String.self, forKey: Key("stop")) {
                out.stop = [one]
            } else {
                guard let many = try? c.decode([String].self, forKey: Key("stop")) else {
                    throw fail("stop", "expected a string or a list of strings")
                }
                out.stop = many
            }
        }
        out.sessionID = try c.decodeIfPresent(String.self, forKey: Key("session_id"))
        if try present("kvtier") {
            struct Hints: Decodable { let next_turn_in_seconds: Double? }
            let hints = try c.decode(Hints.self, forKey: Key("kvtier"))
            if let t = hints.next_turn_in_seconds, !(t >= 0 && t <= 31_536_000) {
                throw fail("kvtier.next_turn_in_seconds", "must be 0 to 31536000 (a year), got \(t)")
            }
            out.nextTurnInSeconds = hints.next_turn_in_seconds
        }
        out.ignoreEOS = try c.decodeIfPresent(Bool.self, forKey: Key("ignore_eos")) ?? false
        if try present("n") {
            out.choices = try c.decode(Int.self, forKey: Key("n"))
            guard (1...maxChoices).contains(out.choices) else {
                throw fail("n", "must be 1 to \(maxChoices), got \(out.choices)")
            }
        }
        return out
    }

    private static func message(_ m: KeyedDecodingContainer<Key>, path: String) throws -> Message {
        guard m.contains(Key("role")) else { throw FieldError(path: path + ".role", message: "missing") }
        let role = try m.decode(String.self, forKey: Key("role"))
        let readAs: String
        switch role {
        case "system", "user", "assistant": readAs = role
        case "developer": readAs = "system"
        case "tool", "function":
            throw FieldError(
                path: path + ".role", message: "'\(role)' messages need tool calling, which kvtierd does not have")
        default:
            throw FieldError(
                path: path + ".role", message: "unknown role '\(role)'; use system, developer, user or assistant")
        }
        if m.contains(Key("tool_calls")), try !m.decodeNil(forKey: Key("tool_calls")) {
            throw FieldError(path: path + ".tool_calls", message: "kvtierd has no tool calling")
        }
        let contentPath = path + ".content"
        let contentIsNull = try !m.contains(Key("content")) || m.decodeNil(forKey: Key("content"))
        if contentIsNull {
            guard readAs == "assistant" else {
                throw FieldError(
                    path: contentPath,
                    message: "expected a string or a list of text parts (null only on assistant messages)")
            }
            return Message(role: readAs, content: "")
        }
        if let text = try? m.decode(String.self, forKey: Key("content")) { return Message(role: readAs, content: text) }
        guard var parts = try? m.nestedUnkeyedContainer(forKey: Key("content")) else {
            throw FieldError(path: contentPath, message: "expected a string or a list of text parts")
        }
        var text = ""
        while !parts.isAtEnd {
            let partPath = contentPath + "[\(parts.currentIndex)]"
            guard let part = try? parts.nestedContainer(keyedBy: Key.self),
                let type = try? part.decode(String.self, forKey: Key("type"))
            else {
                throw FieldError(path: partPath, message: "expected {\"type\": \"text\", \"text\": \"...\"}")
            }
            guard type == "text" else {
                throw FieldError(
                    path: partPath + ".type", message: "'\(type)' is not supported: this model reads text only")
            }
            guard let piece = try? part.decode(String.self, forKey: Key("text")) else {
                throw FieldError(path: partPath + ".text", message: "expected a string")
            }
            text += piece
        }
        return Message(role: readAs, content: text)
    }
}

/// Any JSON value, decoded only to be counted or skipped.
private struct AnyJSON: Decodable {
    init(from decoder: Decoder) throws {}
}
