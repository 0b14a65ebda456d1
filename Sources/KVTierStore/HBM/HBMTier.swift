import Foundation

/// The HBM tier's bookkeeping: which block sits in which page of the arena, which sessions and
/// blocks are held there, which sessions an eviction is demoting, and the tier's counters.
/// `TieredStore` decides what moves (it owns the policy, the copy engine and the lower tiers);
/// this type keeps the rules of who may free a page, each in one step under its lock.
///
/// The rules:
/// - A *pinned session* (a block of it is being admitted or saved: `pinSession`) is not demoted;
///   its pages are freed only by `free(session:)` (a removal), which waits for no pin.
/// - A *pinned block* (a load handle holds it: `pin(keys:)`) is neither demoted nor evicted; the
///   session's other pages may be.
/// - A session being *demoted* (`beginDemotion` ... `endDemotion`) is not pinned by an admission
///   and not freed by a removal until its demotion ends, so no page is read by one thread after
///   another has freed it.
///
/// Threads: `lock` (an `NSLock`) guards `table`, `sessionPins`, `keyPins`, `demoting` and
/// `counters`; it is never held across a copy or I/O. The arena locks itself.
final class HBMTier: @unchecked Sendable {
    let arena: HBMArena
    private let lock = NSLock()
    private var table = HBMPageTable()
    private var sessionPins: [String: Int] = [:]
    private var keyPins: [BlockKey: Int] = [:]
    private var demoting: Set<String> = []
    private var counters: TierStats

    init(arena: HBMArena) {
        self.arena = arena
        counters = TierStats(tier: "hbm", capacityBytes: arena.capacityBytes)
    }

    // MARK: What is where

    func page(of key: BlockKey) -> PageID? { lock.withLock { table[key] } }

    func contains(_ key: BlockKey) -> Bool { lock.withLock { table[key] != nil } }

    /// The resident blocks of a namespace.
    func keys(session: String) -> Set<BlockKey> { lock.withLock { table.keys(session: session) } }

    /// Namespaces with a resident block.
    var sessions: Set<String> { lock.withLock { Set(table.sessions) } }

    /// The tier's counters, with the arena's use now.
    var stats: TierStats {
        var s = lock.withLock { counters }
        s.usedBytes = arena.usedBytes
        s.blocks = arena.usedPages
        return s
    }

    // MARK: Holding pages

    /// Pins `session` once no eviction is demoting it (demotions take milliseconds).
    func pinSessionWhenNotDemoting(_ session: String) {
        while true {
            let pinned: Bool = lock.withLock {
                guard !demoting.contains(session) else { return false }
                sessionPins[session, default: 0] += 1
                return true
            }
            if pinned { return }
            usleep(100)
        }
    }

    /// The page of `key`, its session pinned (nil, nothing pinned: not resident). A save holds
    /// it until the copy engine has read the page.
    func pinSession(ifResident key: BlockKey) -> PageID? {
        lock.withLock {
            guard let p = table[key] else { return nil }
            sessionPins[key.session, default: 0] += 1
            return p
        }
    }

    func unpinSession(_ session: String) {
        lock.withLock { sessionPins[session, default: 1] -= 1 }
    }

    /// Pins blocks a load needs: their pages, once resident, stay until `unpin(keys:)`.
    func pin(keys: [BlockKey]) {
        lock.withLock { for k in keys { keyPins[k, default: 0] += 1 } }
    }

    func unpin(keys: [BlockKey]) {
        lock.withLock {
            for k in keys {
                let n = keyPins[k, default: 1] - 1
                keyPins[k] = n > 0 ? n : nil
            }
        }
    }

    // MARK: Placing and freeing

    /// `key` now lives in `page` (an admitted block's new version: an older page of it is freed).
    func place(_ key: BlockKey, in page: PageID, bytes: Int) {
        lock.withLock {
            if let old = table[key] { arena.free([old]) }
            table[key] = page
            counters.bytesIn += bytes
        }
    }

    /// Loaded blocks copied into their pages: each is resident from now on, unless another load
    /// of the same block got there first (blocks are immutable: its page serves, and the copy
    /// just made, which nobody has seen, is freed). Returns where each block is.
    func deliver(_ placed: [(key: BlockKey, page: PageID, bytes: Int)]) -> [(key: BlockKey, page: PageID)] {
        lock.withLock {
            placed.map { key, page, bytes -> (key: BlockKey, page: PageID) in
                if let earlier = table[key], earlier != page {
                    arena.free([page])
                    return (key, earlier)
                }
                table[key] = page
                counters.promotions += 1
                counters.bytesIn += bytes
                return (key, page)
            }
        }
    }

    /// Frees the pages of `session`'s blocks that match, once no eviction is demoting the session
    /// (an eviction copies pages down before freeing them: it must never read a page freed
    /// here). Does not pin the session, so evictions of it may start right after.
    func free(session: String, matching matches: (BlockKey) -> Bool) {
        while true {
            let freed: Bool = lock.withLock {
                guard !demoting.contains(session) else { return false }
                for k in table.keys(session: session) where matches(k) {
                    if let p = table.removeValue(forKey: k) { arena.free([p]) }
                }
                return true
            }
            if freed { return }
            usleep(100)
        }
    }

    // MARK: Eviction

    /// Namespaces an eviction may take pages from: with a block no load holds, not pinned, not
    /// being demoted, not `sparing`.
    func evictionCandidates(sparing: String?) -> [String] {
        lock.withLock {
            Set(table.sessions.filter { s in table.keys(session: s).contains { keyPins[$0] == nil } })
                .filter { sessionPins[$0, default: 0] == 0 && $0 != sparing && !demoting.contains($0) }.sorted()
        }
    }

    /// Pages of `session` no load holds.
    func evictablePages(of session: String) -> Int {
        lock.withLock { table.keys(session: session).filter { keyPins[$0] == nil }.count }
    }

    /// Starts demoting `session`: its pages no load holds (empty, and nothing started, when it is
    /// pinned or already being demoted). Call `endDemotion` when done.
    func beginDemotion(of session: String) -> [(BlockKey, PageID)] {
        lock.withLock {
            guard sessionPins[session, default: 0] == 0, !demoting.contains(session) else { return [] }
            let pages = table.keys(session: session).filter { keyPins[$0] == nil }.compactMap { k in
                table[k].map { (k, $0) }
            }
            if !pages.isEmpty { demoting.insert(session) }
            return pages
        }
    }

    /// Whether an eviction is demoting some session now (its pages are about to come free).
    var isDemoting: Bool { lock.withLock { !demoting.isEmpty } }

    func endDemotion(of session: String) {
        lock.withLock { _ = demoting.remove(session) }
    }

    /// Frees a demoted block's page, unless a save or load has pinned it since the demotion listed it.
    func evict(_ key: BlockKey, from page: PageID, bytes: Int) {
        lock.withLock {
            guard table[key] == page, sessionPins[key.session, default: 0] == 0, keyPins[key] == nil else { return }
            table[key] = nil
            arena.free([page])
            counters.evictions += 1
            counters.demotions += 1
            counters.bytesOut += bytes
        }
    }

    // MARK: Counters

    /// A saved block's bytes went down to DRAM.
    func countSavedDown(bytes: Int) {
        lock.withLock {
            counters.demotions += 1
            counters.bytesOut += bytes
        }
    }

    func countHit() { lock.withLock { counters.hits += 1 } }

    func countMiss() { lock.withLock { counters.misses += 1 } }
}
