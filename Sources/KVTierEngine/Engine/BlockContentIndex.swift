/// Content addresses of stored blocks: which block holds the KV of a given range of a given token
/// prefix, whoever computed it.
///
/// A block's KV is a function of the tokens up to its end (the model attends to all of them) and
/// of their positions, which are their indices while a chat was never truncated. So two blocks
/// over the same range of the same prefix, computed by one engine for one owner, hold the same
/// KV: the second is a copy. A block's address is the hash of its owner's namespace and every
/// token up to its end (a chain: FNV-1a over the owner, then the tokens), with its range; the
/// store keeps naming the bytes by the namespace and range of the chat that wrote them first
/// (the disk index, recovery and remote records are unchanged), and this index maps each address
/// to that block. vLLM's prefix cache works the same way (block hash -> physical block).
///
/// The engine uses it twice: a turn adopts the stored blocks that extend the prefix its own
/// session holds (chats that arrived together, before any of them had computed the shared
/// prompt, stop computing it as soon as one has), and a turn's state is kept with its new
/// blocks exchanged for equal ones already stored (chats that computed the same prefix in one
/// batch keep one copy). Hashes are checked against the tokens of a session holding the block,
/// so a collision can only cost a missed share, never a wrong KV.
///
/// A value owned by `ChatEngine`, guarded by its `stateLock`.
struct BlockContentIndex {
    struct Address: Hashable {
        let start: Int
        let count: Int
        let hash: UInt64
    }

    struct Entry {
        let block: SessionState.BlockRange
        /// A session that references `block` (its tokens verify a match).
        var holder: String
    }

    private var entries: [Address: Entry] = [:]
    private var addressOf: [SessionState.BlockRange: Address] = [:]

    var count: Int { entries.count }

    /// The addresses of `ranges` (start, count) of `tokens` for `owner`, in one pass over the
    /// tokens. Ranges must lie inside `tokens`.
    static func addresses(of ranges: [(start: Int, count: Int)], in tokens: [Int32], owner: String?) -> [Address] {
        guard !ranges.isEmpty else { return [] }
        var hashAt: [Int: UInt64] = [:]
        for r in ranges { hashAt[r.start + r.count] = 0 }
        var h = TokenHashChain.seed(owner: owner)
        let prime = TokenHashChain.prime
        let last = ranges.map { $0.start + $0.count }.max() ?? 0
        for i in 0..<min(last, tokens.count) {
            h = (h ^ UInt64(UInt32(bitPattern: tokens[i]))) &* prime
            h = (h ^ 0x2ff) &* prime  // token boundary
            if hashAt[i + 1] != nil { hashAt[i + 1] = h }
        }
        return ranges.map { Address(start: $0.start, count: $0.count, hash: hashAt[$0.start + $0.count] ?? 0) }
    }

    /// The blocks of `state` whose KV depends only on the tokens before their end: all of its
    /// stored blocks while it was never truncated, else those inside the sinks (computed before
    /// the first truncation). With their addresses.
    static func addressedBlocks(of state: SessionState) -> [(SessionState.BlockRange, Address)] {
        let truncated = state.dropEnd > state.sinks
        let blocks = state.blocks.filter { $0.end <= state.kvCount && (!truncated || $0.end <= state.sinks) }
        let addresses = Self.addresses(
            of: blocks.map { ($0.start, $0.count) }, in: state.tokens, owner: state.owner)
        return Array(zip(blocks, addresses))
    }

    func entry(at address: Address) -> Entry? { entries[address] }

    /// Records that `block` (referenced by `holder`) is stored at `address`; an address already
    /// taken by another block keeps that one, and a stale holder is replaced.
    mutating func insert(_ block: SessionState.BlockRange, at address: Address, holder: String) {
        if let e = entries[address] {
            if e.block == block { entries[address]?.holder = holder }
            return
        }
        entries[address] = Entry(block: block, holder: holder)
        addressOf[block] = address
    }

    /// Forgets a block nobody references any more.
    mutating func remove(_ block: SessionState.BlockRange) {
        guard let a = addressOf.removeValue(forKey: block) else { return }
        if entries[a]?.block == block { entries[a] = nil }
    }
}
