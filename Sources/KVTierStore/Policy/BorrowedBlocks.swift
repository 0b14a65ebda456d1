/// One block of a namespace, every layer of it: what a chat reads from another chat's namespace
/// (a prefix they share, stored once).
public struct BlockSpan: Hashable, Sendable {
    public var session: String
    public var start: Int
    public var count: Int

    public init(session: String, start: Int, count: Int) {
        self.session = session
        self.start = start
        self.count = count
    }

    public init(_ key: BlockKey) { self.init(session: key.session, start: key.start, count: key.count) }
}

/// The chains of the sessions about to run, for eviction: a block that a running or queued
/// session reads from another namespace belongs, for eviction, to the session that needs it
/// soonest, when that one is needed before the namespace's own session (or the namespace's
/// session is not upcoming at all). Its other blocks stay with their namespace. So a queued
/// chat's whole chain, the prefix it shares included, ranks with that chat; the chat that
/// computed the prefix, idle, loses only its own history (CachedAttention's policy on chains,
/// as vLLM and SGLang rank a shared block by its most urgent user).
///
/// A value; `TieredStore` keeps the latest under its lock.
struct BorrowedBlocks {
    /// Block -> the session it is ranked with.
    private var lentTo: [BlockSpan: String] = [:]
    /// Session -> the blocks of other namespaces ranked with it.
    private(set) var byBorrower: [String: [BlockSpan]] = [:]

    init() {}

    /// `order`: running sessions, then queued ones, next first; `borrowed`: for each, the blocks
    /// it reads outside its own namespace.
    init(order: [String], borrowed: [String: [BlockSpan]]) {
        var rank: [String: Int] = [:]
        for (i, s) in order.enumerated() where rank[s] == nil { rank[s] = i }
        for (i, s) in order.enumerated() where rank[s] == i {
            for span in borrowed[s] ?? [] where span.session != s && lentTo[span] == nil {
                guard i < rank[span.session] ?? Int.max else { continue }
                lentTo[span] = s
                byBorrower[s, default: []].append(span)
            }
        }
    }

    var isEmpty: Bool { lentTo.isEmpty }

    /// The session `key` is ranked with.
    func ranker(of key: BlockKey) -> String { lentTo[BlockSpan(key)] ?? key.session }
}
