import KVTierModel

/// Renders a chat with the model's ChatML template and tokenizes it message by message.
///
/// Only the template's own `<|im_start|>` / `<|im_end|>` become special tokens: message text is
/// tokenized with special-token parsing off, so a client cannot forge another role by writing
/// `<|im_end|>\n<|im_start|>system` into its content. For ordinary text the ids equal those of
/// tokenizing the whole rendered chat, because the special tokens split the text at the same
/// places. Assistant replies this session generated are replaced by the ids it generated, so a
/// client that sends a reply back as history reuses its KV.
public struct ConversationTokenizer {
    public let model: LlamaModel

    public init(model: LlamaModel) { self.model = model }

    public func tokens(for messages: [ChatMessage], replies: [String: [Int32]] = [:]) -> [Int32] {
        let t = model.template
        let tok = model.tokenizer
        if let text = ChatMessage.completionPromptText(messages) {
            // A text completion: the prompt as it is, after the BOS token if the model wants one.
            return (tok.addsBOS ? tok.bosID.map { [$0] } ?? [] : [])
                + tok.encode(text, addSpecial: false, parseSpecial: false)
        }
        guard let start = tok.tokenID(t.start), let end = tok.tokenID(t.end) else {
            // Not a ChatML vocabulary: tokenize the rendered text as a whole.
            return tok.encode(t.render(messages), addSpecial: true, parseSpecial: true)
        }
        func text(_ s: String) -> [Int32] { tok.encode(s, addSpecial: false, parseSpecial: false) }
        let newline = text("\n")
        var out: [Int32] = []
        if tok.addsBOS, let bos = tok.bosID { out.append(bos) }
        if let first = messages.first, first.role != "system", let system = t.defaultSystemMessage {
            out += [start] + text("system\n\(system)") + [end] + newline
        }
        for m in messages {
            if m.role == "assistant", let ids = replies[m.content] {
                out += [start] + text("assistant\n") + ids + [end] + newline
            } else {
                out += [start] + text("\(m.role)\n\(m.content)") + [end] + newline
            }
        }
        out += [start] + text("assistant\n")
        return out
    }

    /// The inverse: the messages a ChatML token history holds, in order, each role and content
    /// decoded from between its `<|im_start|>` and `<|im_end|>` (the last may be unfinished: a
    /// reply cut at max_tokens). The empty prompt for the next reply is left out. Empty for a
    /// vocabulary without ChatML's tokens.
    func messages(from tokens: [Int32]) -> [ChatMessage] {
        let tok = model.tokenizer
        guard let start = tok.tokenID(model.template.start), let end = tok.tokenID(model.template.end) else {
            return []
        }
        var out: [ChatMessage] = []
        var i = 0
        while i < tokens.count {
            guard tokens[i] == start else {
                i += 1
                continue
            }
            var j = i + 1
            while j < tokens.count && tokens[j] != end && tokens[j] != start { j += 1 }
            let text = tok.decode(Array(tokens[(i + 1)..<j]))
            if let newline = text.firstIndex(of: "\n") {
                let content = String(text[text.index(after: newline)...])
                if j < tokens.count || !content.isEmpty {
                    out.append(ChatMessage(role: String(text[..<newline]), content: content))
                }
            }
            i = j
        }
        return out
    }
}

extension ChatMessage {
    /// The role that marks a text completion's prompt (`/v1/completions`): continued as plain
    /// text, without the chat template. Never a role a client can send (the API accepts system,
    /// developer, user and assistant only).
    static let completionPromptRole = "kvtier.completion-prompt"

    /// A text completion's prompt, as the one message of a turn.
    public static func completionPrompt(_ text: String) -> ChatMessage {
        ChatMessage(role: completionPromptRole, content: text)
    }

    /// The prompt text when `messages` is a text completion's.
    static func completionPromptText(_ messages: [ChatMessage]) -> String? {
        guard messages.count == 1, messages[0].role == completionPromptRole else { return nil }
        return messages[0].content
    }
}
