/// One chat message.
public struct ChatMessage: Sendable, Equatable, Codable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// The ChatML template SmolLM2 ships: `<|im_start|>role\ncontent<|im_end|>\n` per message,
/// a default system message when the chat does not start with one, and the assistant
/// header that starts generation.
public struct ChatTemplate: Sendable, Equatable {
    public var defaultSystemMessage: String?
    public var start = "<|im_start|>"
    public var end = "<|im_end|>"

    public init(defaultSystemMessage: String?) {
        self.defaultSystemMessage = defaultSystemMessage
    }

    /// The template for a GGUF: reads the default system message out of `tokenizer.chat_template`
    /// when that template is ChatML with a built-in system line (as SmolLM2's is).
    public init(chatTemplateSource source: String?) {
        var system: String? = nil
        if let source, let open = source.range(of: "<|im_start|>system\\n") ?? source.range(of: "<|im_start|>system\n") {
            let rest = source[open.upperBound...]
            if let close = rest.range(of: "<|im_end|>") {
                system = String(rest[..<close.lowerBound])
            }
        }
        self.init(defaultSystemMessage: system)
    }

    /// Renders messages; with `addGenerationPrompt` ends with the assistant header.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> String {
        var out = ""
        if let first = messages.first, first.role != "system", let system = defaultSystemMessage {
            out += "\(start)system\n\(system)\(end)\n"
        }
        for m in messages {
            out += "\(start)\(m.role)\n\(m.content)\(end)\n"
        }
        if addGenerationPrompt { out += "\(start)assistant\n" }
        return out
    }
}
