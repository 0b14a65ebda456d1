import KVTierModel

/// Renders a chat with the model's ChatML template and tokenizes it message by message.
///
/// Only the template's own `<|im_start|>` / `<|im_end|>` become special tokens: message text is
/// tokenized with special-token parsing off, so a client cannot forge another role by writing
/// `<|im_end|>\n<|im_start|>system` into its content. For ordinary text the ids equal those of
/// tokenizing the whole rendered chat, because the special tokens split the text at the same
/// places. Assistant replies this session generated are replaced by the ids it generated, so a
/// client that sends a reply back as history reuses its KV.
struct ConversationTokenizer {
    let model: LlamaModel

    func tokens(for messages: [ChatMessage], replies: [String: [Int32]]) -> [Int32] {
        let t = model.template
        let tok = model.tokenizer
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
}
