import KVTierModel

/// Renders a chat with the model's template and tokenizes it message by message (the special
/// tokens around each message split the text exactly as whole-text tokenization does), using
/// the session's own token ids for assistant replies it generated, so that a client sending a
/// reply back as history reuses its KV.
struct ConversationTokenizer {
    let model: LlamaModel

    func tokens(for messages: [ChatMessage], replies: [String: [Int32]]) -> [Int32] {
        let t = model.template
        var out: [Int32] = []
        func encode(_ s: String) -> [Int32] { model.tokenizer.encode(s, addSpecial: false, parseSpecial: true) }
        if model.tokenizer.bosID != nil, model.tokenizer.addsBOS, let bos = model.tokenizer.bosID { out.append(bos) }
        if let first = messages.first, first.role != "system", let system = t.defaultSystemMessage {
            out += encode("\(t.start)system\n\(system)\(t.end)\n")
        }
        for m in messages {
            if m.role == "assistant", let ids = replies[m.content] {
                out += encode("\(t.start)assistant\n") + ids + encode("\(t.end)\n")
            } else {
                out += encode("\(t.start)\(m.role)\n\(m.content)\(t.end)\n")
            }
        }
        out += encode("\(t.start)assistant\n")
        return out
    }
}
