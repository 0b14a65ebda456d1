import KVTierStore

/// The tiered store's capacity accounting without bytes: which blocks of each session sit in
/// HBM, DRAM and on disk, filled and emptied by the rules of `TieredStore`, with its eviction
/// policies (`LRUPolicy`, `HintDrivenPolicy`, the same classes) choosing the victims.
///
/// The rules it follows, as the store does:
/// - a turn's new blocks land in HBM, pages of other sessions not running are evicted for them
///   (the policy's victims, demoted to DRAM when no lower tier has them);
/// - a save copies the turn's new blocks to DRAM (inclusive: HBM keeps its pages), write-through
///   also to disk; DRAM makes room by demoting whole sessions (the policy's victims) to disk,
///   only those the policy ranks before the block's own session (else the block goes to disk);
///   a full disk deletes whole sessions (the policy's victims);
/// - a load takes each block from the highest tier holding it; a block on disk is promoted into
///   DRAM on its way up; the reused prefix ends at the first block no tier holds;
/// - a prefetch promotes a session's disk blocks into DRAM;
/// - a block rewritten by a turn (the tail block a reply extends) replaces its older copies.
///
/// Each operation reports the bytes it moved, which the simulation charges to the link and the
/// disk. Owned by one simulation (single-threaded).
struct SimulatedTiers {
    struct Moved {
        /// DRAM to HBM.
        var linkBytes = 0
        /// HBM to DRAM (saves, demotions of blocks no lower tier had).
        var linkOutBytes = 0
        var diskReadBytes = 0
        var diskWriteBytes = 0
    }

    struct Load {
        var reusedTokens = 0
        var hbm = 0, dram = 0, disk = 0
        var moved = Moved()
    }

    let policy: EvictionPolicy
    let blockTokens: Int
    let bytesPerToken: Int
    let hbmPages: Int
    let dramCapacity: Int
    let diskCapacity: Int
    let lowerTiers: Bool

    /// Tokens each session's stored KV covers, and the index of its first kept block (blocks
    /// before it were dropped when the chat outgrew the context window).
    private var tokens: [String: Int] = [:]
    private var hbm: [String: Set<Int>] = [:]
    private var dram: [String: Set<Int>] = [:]
    private var disk: [String: Set<Int>] = [:]
    private var hbmUsed = 0
    private var dramUsed = 0
    private var diskUsed = 0
    /// Sessions whose turns run: their pages are not evicted.
    private var pinned: Set<String> = []
    /// Bytes moved since the last `take()`.
    private var moved = Moved()
    private(set) var blocksDropped = 0

    init(
        policy: EvictionPolicy, blockTokens: Int, bytesPerToken: Int, hbmBytes: Int, dramBytes: Int, diskBytes: Int,
        lowerTiers: Bool
    ) {
        self.policy = policy
        self.blockTokens = max(1, blockTokens)
        self.bytesPerToken = max(1, bytesPerToken)
        self.hbmPages = max(0, hbmBytes / (self.blockTokens * self.bytesPerToken))
        self.dramCapacity = lowerTiers ? max(0, dramBytes) : 0
        self.diskCapacity = lowerTiers ? max(0, diskBytes) : 0
        self.lowerTiers = lowerTiers
    }

    var pageBytes: Int { blockTokens * bytesPerToken }
    var dramBytesUsed: Int { dramUsed }
    var diskBytesUsed: Int { diskUsed }
    var freePages: Int { hbmPages - hbmUsed }

    private func bytes(_ session: String, _ block: Int) -> Int {
        let n = tokens[session] ?? 0
        return max(0, min(blockTokens, n - block * blockTokens)) * bytesPerToken
    }

    func storedTokens(_ session: String) -> Int { tokens[session] ?? 0 }

    /// Bytes of a session's KV (what the look-ahead window sums).
    func sessionBytes(_ session: String) -> Int { storedTokens(session) * bytesPerToken }

    /// Pages held by running sessions.
    var pinnedPages: Int { pinned.reduce(0) { $0 + (hbm[$1]?.count ?? 0) } }

    /// Whether a turn whose session will hold `pages` pages can start next to the running ones.
    func fits(session: String, pages: Int) -> Bool { pinnedPages + pages <= hbmPages }

    mutating func take() -> Moved {
        defer { moved = Moved() }
        return moved
    }

    // MARK: A turn

    /// The chat outgrew the window: its first `blocks` blocks are dropped everywhere and the
    /// rest renumbered (position-decoupled keys stay valid).
    mutating func dropFront(_ session: String, blocks: Int) {
        guard blocks > 0, let n = tokens[session] else { return }
        for i in 0..<blocks { removeCopies(session, i, keepHBM: false) }
        func shift(_ s: Set<Int>?) -> Set<Int>? { s.map { Set($0.filter { $0 >= blocks }.map { $0 - blocks }) } }
        // Renumbering keeps each tier's byte count: only whole blocks were removed.
        hbm[session] = shift(hbm[session])
        dram[session] = shift(dram[session])
        disk[session] = shift(disk[session])
        tokens[session] = max(0, n - blocks * blockTokens)
    }

    /// Starts a turn of `session` that can reuse `reusable` tokens of its stored KV: pins it and
    /// brings the reused prefix into HBM.
    mutating func load(_ session: String, reusable: Int) -> Load {
        pinned.insert(session)
        policy.touch(session: session)
        var out = Load()
        let usable = min(reusable, tokens[session] ?? 0)
        let blocks = (usable + blockTokens - 1) / blockTokens
        for i in 0..<blocks {
            let n = min(blockTokens, usable - i * blockTokens)
            if hbm[session]?.contains(i) == true {
                out.hbm += n
            } else if dram[session]?.contains(i) == true || disk[session]?.contains(i) == true {
                let fromDisk = dram[session]?.contains(i) != true
                if fromDisk {
                    moved.diskReadBytes += bytes(session, i)
                    insertIntoDRAM(session, i)
                }
                guard allocatePage() else { break }
                hbm[session, default: []].insert(i)
                moved.linkBytes += bytes(session, i)
                if fromDisk { out.disk += n } else { out.dram += n }
            } else {
                break
            }
            out.reusedTokens += n
        }
        out.moved = take()
        return out
    }

    /// The turn computed KV up to `total` tokens: blocks from the first one it changed are new
    /// versions in HBM (older copies below are gone). Pages it cannot get are counted dropped.
    mutating func computed(_ session: String, total: Int, from changedToken: Int) {
        let first = changedToken / blockTokens
        let old = tokens[session] ?? 0
        let oldBlocks = (old + blockTokens - 1) / blockTokens
        for i in first..<max(first, oldBlocks) { removeCopies(session, i, keepHBM: true) }
        tokens[session] = total
        let blocks = (total + blockTokens - 1) / blockTokens
        for i in first..<max(first, blocks) where hbm[session]?.contains(i) != true {
            if allocatePage() {
                hbm[session, default: []].insert(i)
            } else {
                blocksDropped += 1
            }
        }
        policy.touch(session: session)
    }

    /// Saves the blocks from `changedToken` on down the hierarchy (write-through also to disk),
    /// ends the turn and returns the bytes it moved.
    mutating func save(_ session: String, from changedToken: Int, writeThrough: Bool) -> Moved {
        if lowerTiers {
            let blocks = ((tokens[session] ?? 0) + blockTokens - 1) / blockTokens
            for i in (changedToken / blockTokens)..<max(changedToken / blockTokens, blocks)
            where hbm[session]?.contains(i) == true {
                moved.linkOutBytes += bytes(session, i)
                insertIntoDRAM(session, i)
                if writeThrough && disk[session]?.contains(i) != true { writeToDisk(session, i) }
            }
        }
        pinned.remove(session)
        return take()
    }

    /// Frees the session's HBM pages once its turn has ended (CachedAttention's design, where HBM
    /// holds only running turns): blocks no lower tier has are demoted first.
    mutating func releaseHBM(_ session: String) {
        for i in (hbm[session] ?? []).sorted() {
            if lowerTiers && dram[session]?.contains(i) != true && disk[session]?.contains(i) != true {
                moved.linkOutBytes += bytes(session, i)
                insertIntoDRAM(session, i)
            }
            hbmUsed -= 1
        }
        hbm[session] = nil
    }

    /// Ends a turn that keeps nothing (recomputation): the session's pages are freed.
    mutating func discard(_ session: String) {
        let blocks = ((tokens[session] ?? 0) + blockTokens - 1) / blockTokens
        for i in 0..<blocks { removeCopies(session, i, keepHBM: false) }
        tokens[session] = nil
        hbm[session] = nil
        pinned.remove(session)
        policy.forget(session: session)
    }

    /// Promotes the session's blocks that only the disk holds into DRAM (with `blocks`, only its
    /// first ones); the bytes read.
    mutating func prefetch(_ session: String, blocks: Int? = nil) -> Int {
        guard let onDisk = disk[session] else { return 0 }
        for i in onDisk.sorted()
        where i < (blocks ?? Int.max) && dram[session]?.contains(i) != true && hbm[session]?.contains(i) != true {
            moved.diskReadBytes += bytes(session, i)
            insertIntoDRAM(session, i)
        }
        return take().diskReadBytes
    }

    /// Whether any block of the session's first `reusable` tokens is only on disk.
    func needsDisk(_ session: String, reusable: Int) -> Bool {
        let blocks = (min(reusable, tokens[session] ?? 0) + blockTokens - 1) / blockTokens
        return (0..<blocks).contains { i in
            disk[session]?.contains(i) == true && dram[session]?.contains(i) != true
                && hbm[session]?.contains(i) != true
        }
    }

    // MARK: Placement (the store's rules)

    private mutating func removeCopies(_ session: String, _ i: Int, keepHBM: Bool) {
        let b = bytes(session, i)
        if !keepHBM, hbm[session]?.remove(i) != nil { hbmUsed -= 1 }
        if dram[session]?.remove(i) != nil { dramUsed -= b }
        if disk[session]?.remove(i) != nil { diskUsed -= b }
    }

    private mutating func allocatePage() -> Bool {
        if hbmUsed < hbmPages {
            hbmUsed += 1
            return true
        }
        let candidates = hbm.filter { !$0.value.isEmpty && !pinned.contains($0.key) }.keys.sorted()
        let victims = policy.victims(among: candidates, bytesNeeded: pageBytes) { (hbm[$0]?.count ?? 0) * pageBytes }
        for v in victims {
            for i in (hbm[v] ?? []).sorted() {
                if lowerTiers && dram[v]?.contains(i) != true && disk[v]?.contains(i) != true {
                    moved.linkOutBytes += bytes(v, i)
                    insertIntoDRAM(v, i)
                }
                hbm[v]?.remove(i)
                hbmUsed -= 1
            }
            if hbmUsed < hbmPages { break }
        }
        guard hbmUsed < hbmPages else { return false }
        hbmUsed += 1
        return true
    }

    /// Puts a block into DRAM, making room by the policy; a block whose own session the policy
    /// would evict before enough others goes to disk instead (or stays there).
    private mutating func insertIntoDRAM(_ session: String, _ i: Int) {
        guard lowerTiers, dram[session]?.contains(i) != true else { return }
        let b = bytes(session, i)
        guard b <= dramCapacity, makeRoomInDRAM(b, for: session) else {
            if disk[session]?.contains(i) != true { writeToDisk(session, i) }
            return
        }
        dram[session, default: []].insert(i)
        dramUsed += b
    }

    private func dramBytes(_ session: String) -> Int { (dram[session] ?? []).reduce(0) { $0 + bytes(session, $1) } }

    private func diskBytes(_ session: String) -> Int { (disk[session] ?? []).reduce(0) { $0 + bytes(session, $1) } }

    /// Demotes whole sessions (the policy's choice, among those it ranks before `session`) from
    /// DRAM to disk until `b` more bytes fit; false when they are not enough.
    private mutating func makeRoomInDRAM(_ b: Int, for session: String) -> Bool {
        let others = dram.filter { !$0.value.isEmpty && $0.key != session }.keys.sorted()
        guard
            let victims = policy.victims(
                placing: session, among: others, bytesNeeded: dramUsed + b - dramCapacity, sizeOf: dramBytes)
        else { return false }
        for v in victims {
            for i in (dram[v] ?? []).sorted() {
                if disk[v]?.contains(i) != true { writeToDisk(v, i) }
                dram[v]?.remove(i)
                dramUsed -= bytes(v, i)
            }
        }
        return true
    }

    /// Writes a block to disk, deleting the policy's victims there when it is full; a block that
    /// still does not fit is dropped (recomputed when needed).
    private mutating func writeToDisk(_ session: String, _ i: Int) {
        let b = bytes(session, i)
        for _ in 0..<4 where diskUsed + b > diskCapacity {
            let candidates = disk.filter { !$0.value.isEmpty && $0.key != session }.keys.sorted()
            let victims = policy.victims(among: candidates, bytesNeeded: diskUsed + b - diskCapacity) {
                diskBytes($0)
            }
            guard !victims.isEmpty else { break }
            for v in victims {
                diskUsed -= diskBytes(v)
                disk[v] = nil
            }
        }
        guard diskUsed + b <= diskCapacity else {
            blocksDropped += 1
            return
        }
        disk[session, default: []].insert(i)
        diskUsed += b
        moved.diskWriteBytes += b
    }
}
