/// What the engine knows about one chat: the tokens whose KV is stored, which of them were
/// dropped by truncation, the stored blocks, and the assistant replies it generated (so a
/// client that sends a reply back as history gets the same token ids, hence reuse).
///
/// Token indices are positions in the chat's full history; blocks are keyed by them. RoPE
/// positions are separate: the live tokens (sinks, then everything from `dropEnd` on) sit at
/// contiguous positions 0, 1, 2, ...
struct SessionState: Codable, Sendable {
    var id: String
    /// Who created the session (the daemon's peer uid); nil for sessions made in-process.
    /// Its hash-chain links live in this owner's namespace.
    var owner: String?
    /// History tokens; KV exists for indices in `live` below `kvCount`.
    var tokens: [Int32] = []
    /// Tokens at the start of `tokens` whose KV is stored.
    var kvCount = 0
    /// Sinks kept at the front when truncating.
    var sinks = 0
    /// History indices [sinks, dropEnd) were dropped by truncation.
    var dropEnd = 0
    /// Stored blocks (history-index ranges, the same for every layer), sorted, non-overlapping.
    var blocks: [BlockRange] = []
    /// Assistant replies generated in this session: content text -> token ids (without <|im_end|>).
    var replies: [String: [Int32]] = [:]

    struct BlockRange: Codable, Sendable, Hashable {
        var start: Int
        var count: Int
        var end: Int { start + count }
    }

    /// Live history indices in order (what the KV window holds).
    func liveIndices(upTo end: Int) -> [Int] {
        let s = min(sinks, end)
        let tail = dropEnd > s ? dropEnd : s
        return Array(0..<s) + (tail < end ? Array(tail..<end) : [])
    }

    /// RoPE position of history index i (assumes i is live).
    func position(of i: Int) -> Int32 {
        if i < sinks || dropEnd <= sinks { return Int32(i) }
        return Int32(sinks + (i - dropEnd))
    }
}
