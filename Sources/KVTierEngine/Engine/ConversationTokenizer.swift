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
        tokenize(messages).tokens(replies: replies)
    }

    /// The chat tokenized once, message by message: `tokens(replies:)` then puts it together
    /// for any session's replies without tokenizing again.
    public func tokenize(_ messages: [ChatMessage]) -> TokenizedConversation {
        let t = model.template
        let tok = model.tokenizer
        if let text = ChatMessage.completionPromptText(messages) {
            // A text completion: the prompt as it is, after the BOS token if the model wants one.
            let bos = tok.addsBOS ? tok.bosID.map { [$0] } ?? [] : []
            return TokenizedConversation(
                head: bos + tok.encode(text, addSpecial: false, parseSpecial: false), messages: [], tail: [])
        }
        guard let start = tok.tokenID(t.start), let end = tok.tokenID(t.end) else {
            // Not a ChatML vocabulary: tokenize the rendered text as a whole.
            return TokenizedConversation(
                head: tok.encode(t.render(messages), addSpecial: true, parseSpecial: true), messages: [], tail: [])
        }
        func text(_ s: String) -> [Int32] { tok.encode(s, addSpecial: false, parseSpecial: false) }
        let newline = text("\n")
        var head: [Int32] = []
        if tok.addsBOS, let bos = tok.bosID { head.append(bos) }
        if let first = messages.first, first.role != "system", let system = t.defaultSystemMessage {
            head += [start] + text("system\n\(system)") + [end] + newline
        }
        let assistantHeader = [start] + text("assistant\n")
        let segments = messages.map { m in
            TokenizedConversation.Message(
                tokens: [start] + text("\(m.role)\n\(m.content)") + [end] + newline,
                reply: m.role == "assistant"
                    ? .init(content: m.content, header: assistantHeader, trailer: [end] + newline) : nil)
        }
        return TokenizedConversation(head: head, messages: segments, tail: assistantHeader)
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

/// A chat's tokens, message by message (`ConversationTokenizer.tokenize`): an assistant message
/// can take the ids a session generated for its text instead of its own tokenization.
public struct TokenizedConversation: Sendable, Equatable {
    struct Message: Sendable, Equatable {
        struct Reply: Sendable, Equatable {
            /// The message's text, the key of a session's replies.
            var content: String
            /// The tokens around a reply's ids.
            var header: [Int32]
            var trailer: [Int32]
        }

        /// The message as tokenized from its text.
        var tokens: [Int32]
        /// For an assistant message: what replaces its text's tokens by a session's ids.
        var reply: Reply?
    }

    /// BOS and the template's default system message (or a completion's whole prompt).
    var head: [Int32]
    var messages: [Message]
    /// The empty assistant turn the reply goes into.
    var tail: [Int32]

    /// The chat's tokens, each assistant message whose text is in `replies` as the ids stored
    /// under it.
    public func tokens(replies: [String: [Int32]] = [:]) -> [Int32] {
        var out = head
        for m in messages {
            if let r = m.reply, let ids = replies[r.content] {
                out += r.header + ids + r.trailer
            } else {
                out += m.tokens
            }
        }
        return out + tail
    }
}
