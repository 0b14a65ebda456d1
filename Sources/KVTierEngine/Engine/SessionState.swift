/// What the engine knows about one chat: the tokens whose KV is stored, which of them were
/// dropped by truncation, the stored blocks, and the assistant replies it generated (so a
/// client that sends a reply back as history gets the same token ids, hence reuse).
///
/// Token indices are positions in the chat's full history; blocks are keyed by them. RoPE
/// positions are separate: the live tokens (sinks, then everything from `dropEnd` on) sit at
/// contiguous positions 0, 1, 2, ...
///
/// Blocks are immutable and may be shared: a block is stored under its `home` namespace, which
/// is the session that wrote it (or one of that session's alternate namespaces, see
/// `ChatEngine`), and a session forked from another one references the other's blocks for
/// their common prefix instead of copying them. The engine counts references and removes a
/// block only when no session references it.
struct SessionState: Codable, Sendable {
    var id: String
    /// Who created the session (the daemon's peer uid); nil for sessions made in-process.
    /// Its hash-chain links live in this owner's namespace.
    var owner: String?
    /// Made for a request without a session id: such a session is continued only by a request
    /// that extends its whole history, and never by a named request.
    var anonymous = false
    /// Turns run so far (names the alternate namespace a turn writes a still-referenced range to).
    var turns = 0
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
    /// When its last turn started, then ended (seconds since 1970); nil in records written before
    /// it was kept.
    var lastUsed: Double?

    struct BlockRange: Codable, Sendable, Hashable {
        /// The store namespace (`BlockKey.session`) the block lives under.
        var home: String
        var start: Int
        var count: Int
        var end: Int { start + count }
    }

    init(id: String, owner: String?, anonymous: Bool = false) {
        self.id = id
        self.owner = owner
        self.anonymous = anonymous
    }

    private enum CodingKeys: String, CodingKey {
        case id, owner, anonymous, turns, tokens, kvCount, sinks, dropEnd, blocks, replies, lastUsed
    }

    /// A block as saved before blocks had a `home` (it then lived under its session's id).
    private struct SavedBlock: Decodable {
        var home: String?
        var start: Int
        var count: Int
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(String.self, forKey: .id)
        owner = try c.decodeIfPresent(String.self, forKey: .owner)
        anonymous = try c.decodeIfPresent(Bool.self, forKey: .anonymous) ?? false
        turns = try c.decodeIfPresent(Int.self, forKey: .turns) ?? 0
        tokens = try c.decode([Int32].self, forKey: .tokens)
        kvCount = try c.decode(Int.self, forKey: .kvCount)
        sinks = try c.decode(Int.self, forKey: .sinks)
        dropEnd = try c.decode(Int.self, forKey: .dropEnd)
        let saved = try c.decode([SavedBlock].self, forKey: .blocks)
        blocks = saved.map { [id] in BlockRange(home: $0.home ?? id, start: $0.start, count: $0.count) }
        replies = try c.decode([String: [Int32]].self, forKey: .replies)
        lastUsed = try c.decodeIfPresent(Double.self, forKey: .lastUsed)
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
