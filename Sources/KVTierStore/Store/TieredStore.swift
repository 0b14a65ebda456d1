import Dispatch
import Foundation

/// CachedAttention's AttentionStore: blocks of KV in simulated HBM, host DRAM and RocksDB on
/// disk, moved up layer by layer for a session about to run and moved down without stalling
/// compute.
///
/// Ownership:
/// - `hbm` (`HBMTier`, its own lock) keeps which block sits in which HBM page, which sessions and
///   blocks are held there and which are being demoted; the store decides what moves.
/// - `lock` guards `unsyncedWrites` and `borrowed`. It is never held across I/O or copies.
/// - `loader` (serial queue "kvtier.store.loader") runs loads: it reads disk, promotes into DRAM
///   and submits DRAM -> HBM copies to the copy engine, layer after layer.
/// - `prefetcher` (serial queue "kvtier.store.prefetcher") moves sessions from disk to DRAM ahead
///   of use, block by block, and pauses whenever a load is queued or reading (`loadsWaiting`), so
///   a turn's load never waits behind a prefetch.
/// - `writeback` (serial queue "kvtier.store.writeback") finishes saves: DRAM insertion, making
///   room in DRAM by demoting sessions to disk, and write-through to disk.
/// - The copy engine (its own serial queue) does every DRAM <-> HBM byte move; the disk tier
///   (its own serial queue) owns RocksDB; DRAMTier, HBMArena and the policy lock themselves.
/// - The remote tier (optional) sends writes on its own queue, behind the local tiers; the loader
///   reads from it on a local miss. `publisher` (serial) hands it records after earlier saves.
public final class TieredStore: @unchecked Sendable {
    public let configuration: StoreConfiguration
    public let model: ModelFingerprint
    public let shape: KVShape
    public let elementType: KVElementType
    // The tiers themselves stay inside the store (and its tests): the engine and the daemon see
    // the face below, "The store's face".
    let hbm: HBMTier
    var arena: HBMArena { hbm.arena }
    let copyEngine: CopyEngine
    let dram: DRAMTier
    let disk: DiskTier
    /// The Redis Cluster below the disk tier, when configured.
    public let remote: RemoteTier?
    let policy: EvictionPolicy

    private let lock = NSLock()
    /// The upcoming sessions' blocks in other namespaces, ranked with them for eviction from DRAM
    /// (hint-driven policy only; guarded by `lock`).
    private var borrowed = BorrowedBlocks()
    private let loader = DispatchQueue(label: "kvtier.store.loader")
    private let prefetcher = DispatchQueue(label: "kvtier.store.prefetcher")
    /// Loads queued on `loader` and not yet waiting for their consumer, plus layers being read.
    private let loadsWaiting = Counter()
    private let writeback = DispatchQueue(label: "kvtier.store.writeback")
    /// Publishes records to the remote tier once the saves issued before them are on their way.
    private let publisher = DispatchQueue(label: "kvtier.store.publisher")
    private let saveSlots: DispatchSemaphore
    private let inFlight = Counter()
    /// Saves in flight by session namespace (guarded by `saveCondition`, which `waitForSaves(of:)`
    /// waits on).
    private var savingSessions: [String: Int] = [:]
    private let saveCondition = NSCondition()
    /// Blocks written to disk since the last WAL sync (guarded by `lock`).
    private var unsyncedWrites = 0
    /// Fires on `writeback` every `diskFlushInterval` to sync the WAL (group commit).
    private var flushTimer: DispatchSourceTimer?

    /// Pages of the HBM arena (each holds one block of one layer).
    public var hbmPages: Int { arena.pageCount }

    /// Bytes of one block's payload (keys and values) at full block size.
    public var blockBytes: Int { 2 * configuration.blockTokens * shape.rowWidth * elementType.byteWidth }

    public init(
        configuration: StoreConfiguration, model: ModelFingerprint, shape: KVShape, elementType: KVElementType = .f16
    ) throws(StoreError) {
        self.configuration = configuration
        self.model = model
        self.shape = shape
        self.elementType = elementType
        let pageBytes = 2 * configuration.blockTokens * shape.rowWidth * elementType.byteWidth
        do {
            hbm = HBMTier(
                arena: try HBMArena(
                    capacityBytes: configuration.hbmCapacityBytes, pageBytes: pageBytes, prefault: false))
        } catch {
            throw .arena(error)
        }
        copyEngine = CopyEngine(configuration: configuration.link)
        dram = DRAMTier(
            configuration: .init(capacityBytes: configuration.dramCapacityBytes, compress: configuration.compressDRAM))
        do {
            disk = try DiskTier(
                directory: configuration.stateDirectory, capacityBytes: configuration.diskCapacityBytes,
                shuffle: configuration.shuffleOnDisk, recovery: configuration.diskRecovery)
        } catch {
            throw .disk(error)
        }
        remote = configuration.remote.map { RemoteTier(configuration: $0) }
        policy = configuration.policy == .lru ? LRUPolicy() : HintDrivenPolicy()
        saveSlots = DispatchSemaphore(value: max(1, configuration.maxSavesInFlight))
        if configuration.diskFlushInterval > 0 && !configuration.syncEveryDiskWrite {
            let timer = DispatchSource.makeTimerSource(queue: writeback)
            let interval = DispatchTimeInterval.microseconds(Int(configuration.diskFlushInterval * 1e6))
            timer.schedule(deadline: .now() + interval, repeating: interval)
            timer.setEventHandler { [weak self] in self?.groupCommit() }
            timer.resume()
            flushTimer = timer
        }
    }

    deinit {
        flushTimer?.cancel()
    }

    /// Syncs the WAL if blocks were written since the last sync.
    private func groupCommit() {
        let pending = lock.withLock { () -> Int in
            let n = unsyncedWrites
            unsyncedWrites = 0
            return n
        }
        if pending > 0 { try? disk.flush() }
    }

    // MARK: HBM

    /// Places a freshly computed block in HBM (the decoder's output lands there). Evicts other,
    /// unpinned sessions' pages (saving them to DRAM first when they exist nowhere else) if the
    /// arena is full; throws `hbmFull` when nothing can be evicted.
    @discardableResult
    public func admit(_ block: KVBlock) throws(StoreError) -> PageID {
        try checkShape(block)
        // The session is pinned while its block is replaced, so no eviction reads the old page
        // while it is freed here (and an eviction already under way finishes first).
        hbm.pinSessionWhenNotDemoting(block.key.session)
        defer { hbm.unpinSession(block.key.session) }
        try forgetOlderVersions(of: block.key)
        let page = try allocatePage(sparing: block.key.session)
        block.payload.withUnsafeBytes { src in
            let half = src.count / 2
            arena.pointer(page).copyMemory(from: src.baseAddress!, byteCount: half)
            (arena.pointer(page) + pageValuesOffset).copyMemory(from: src.baseAddress! + half, byteCount: half)
        }
        hbm.place(block.key, in: page, bytes: block.payload.count)
        policy.touch(session: block.key.session)
        return page
    }

    /// A new version of a block is coming: older copies below must not survive it.
    private func forgetOlderVersions(of key: BlockKey) throws(StoreError) {
        let replacing = hbm.contains(key) || dram.contains(key) || disk.contains(key)
        if replacing {
            waitForSaves()  // no copy of the old version may still be on its way down
            _ = dram.remove(key)
            do { _ = try disk.delete(key) } catch { throw .disk(error) }
            remote?.delete([key])
        } else if !disk.isHealthy {
            // A degraded disk tier may not know what its database holds (it was never opened):
            // record the deletion so that an older copy cannot come back when it reopens.
            do { _ = try disk.delete(key) } catch { throw .disk(error) }
        }
    }

    // MARK: Pages the decoder writes in place

    /// An HBM page for a block the decoder is about to compute, owned by the caller until it
    /// `adopt`s or `releasePage`s it: the decoder writes the block's rows straight into it, in
    /// the store's page format (keys from byte 0, values from `pageValuesOffset`), so a finished
    /// block needs no copy to land in HBM. Evicts other, unpinned sessions like `admit` (never
    /// `session`'s pages); throws `hbmFull` when nothing can be evicted.
    public func reservePage(for session: String) throws(StoreError) -> PageID {
        try allocatePage(sparing: session)
    }

    /// The start of a reserved page's bytes (the caller owns the page; see `reservePage`).
    public func pageBytes(_ page: PageID) -> UnsafeMutableRawPointer { arena.pointer(page) }

    /// Gives back a reserved page that was not adopted.
    public func releasePage(_ page: PageID) { arena.free([page]) }

    /// Makes a reserved page, holding `key`'s block in the store's page format (its `count`
    /// rows), the block's page in HBM, as `admit` would with a
    /// copy. The block is held (`pin(keys:)`): it stays in HBM, read in place, until `unpin`.
    /// On failure the page stays the caller's. `savedBelow`: a partial save of all the block's
    /// rows already put this very block below (`savePartials` under `key`): that copy is kept
    /// (`save(key, extending: key)` then makes it the complete block, copying no rows).
    public func adopt(_ page: PageID, as key: BlockKey, savedBelow: Bool = false) throws(StoreError) {
        guard key.model == model, key.layer >= 0, key.layer < shape.layers, key.count > 0,
            key.count <= configuration.blockTokens
        else { throw .blockShape(key, "not a block of this store's model and shape") }
        hbm.pinSessionWhenNotDemoting(key.session)
        defer { hbm.unpinSession(key.session) }
        if !savedBelow { try forgetOlderVersions(of: key) }
        hbm.pin(keys: [key])
        hbm.place(key, in: page, bytes: blockPayloadBytes(key))
        policy.touch(session: key.session)
    }

    /// Lets blocks `adopt` held go (they may be evicted again).
    public func unpin(_ keys: [BlockKey]) { hbm.unpin(keys: keys) }

    /// Where a block resident in HBM keeps its `rows` rows: keys from the page's start, values
    /// from `pageValuesOffset` (the store's page format). The page must be pinned by the caller
    /// (a load handle not yet released) or otherwise not evictable.
    public func contents(of page: PageID, rows: Int) -> (keys: UnsafeRawPointer, values: UnsafeRawPointer) {
        let base = UnsafeRawPointer(arena.pointer(page))
        return (base, base + pageValuesOffset)
    }

    /// A resident block's payload as the lower tiers keep it: the keys of its `rows` rows, then
    /// their values (a copy; tests and checks).
    public func payload(inPage page: PageID, rows: Int) -> [UInt8] {
        let (k, v) = contents(of: page, rows: rows)
        let n = rows * rowBytes
        return Array(UnsafeRawBufferPointer(start: k, count: n)) + Array(UnsafeRawBufferPointer(start: v, count: n))
    }

    /// Where a page keeps its values: after room for the keys of a whole block, so a block the
    /// decoder fills in place never moves its values, whatever its final count.
    public var pageValuesOffset: Int { configuration.blockTokens * rowBytes }

    public func isInHBM(_ key: BlockKey) -> Bool { hbm.contains(key) }

    private func checkShape(_ block: KVBlock) throws(StoreError) {
        guard block.key.model == model else { throw .blockShape(block.key, "it was computed by another model") }
        guard block.elementType == elementType, block.rowWidth == shape.rowWidth else {
            throw .blockShape(block.key, "element type or row width differs from the store's")
        }
        guard block.key.count > 0, block.key.count <= configuration.blockTokens, block.isWellFormed else {
            throw .blockShape(
                block.key,
                "token count \(block.key.count) must be 1...\(configuration.blockTokens) and match the payload")
        }
        guard block.key.layer >= 0, block.key.layer < shape.layers else {
            throw .blockShape(block.key, "no such layer")
        }
    }

    /// A free HBM page, evicting if needed: never a page a load has pinned, nor one of
    /// `sparing`'s (the session whose new block needs the page). Pages pinned only by saves
    /// still on their way down come free when the copy engine has read them, so a full arena
    /// waits for that once before it gives up.
    private func allocatePage(sparing session: String?) throws(StoreError) -> PageID {
        if let p = arena.allocate(count: 1)?.first { return p }
        try evictHBM(pages: 1, sparing: session)
        if let p = arena.allocate(count: 1)?.first { return p }
        copyEngine.waitUntilIdle()
        try evictHBM(pages: 1, sparing: session)
        if let p = arena.allocate(count: 1)?.first { return p }
        // Another thread's eviction may be demoting a session right now (it is then no candidate
        // here), freeing its pages one by one: wait for it rather than fail, or a load would
        // recompute what it could have read.
        while hbm.isDemoting {
            usleep(200)
            if let p = arena.allocate(count: 1)?.first { return p }
        }
        try evictHBM(pages: 1, sparing: session)
        if let p = arena.allocate(count: 1)?.first { return p }
        throw .hbmFull(neededPages: 1, freePages: arena.freePages)
    }

    /// Frees at least `pages` HBM pages from unpinned sessions chosen by the policy.
    private func evictHBM(pages: Int, sparing: String?) throws(StoreError) {
        let candidates = hbm.evictionCandidates(sparing: sparing)
        let pageBytes = arena.pageStride
        let victims = policy.victims(among: candidates, bytesNeeded: pages * pageBytes) { s in
            self.hbm.evictablePages(of: s) * pageBytes
        }
        for v in victims {
            try demoteFromHBM(session: v)
            if arena.freePages >= pages { return }
        }
    }

    /// Moves a session out of HBM: blocks not yet in DRAM or on disk are copied down first.
    private func demoteFromHBM(session: String) throws(StoreError) {
        let resident = hbm.beginDemotion(of: session)
        guard !resident.isEmpty else { return }
        defer { hbm.endDemotion(of: session) }
        // A save may still be copying one of these pages out: let it finish before freeing them.
        copyEngine.waitUntilIdle()
        for (key, page) in resident {
            if configuration.lowerTiers && !dram.contains(key) && !disk.contains(key) {
                let block = readBlock(key: key, page: page)
                try insertIntoDRAM(block, arrival: .saved)
            }
            hbm.evict(key, from: page, bytes: blockPayloadBytes(key))
        }
    }

    private func blockPayloadBytes(_ key: BlockKey) -> Int { 2 * key.count * shape.rowWidth * elementType.byteWidth }

    private func readBlock(key: BlockKey, page: PageID) -> KVBlock {
        let n = blockPayloadBytes(key)
        var bytes = [UInt8](repeating: 0, count: n)
        bytes.withUnsafeMutableBytes { dst in
            let base = arena.pointer(page)
            copyEngine.copySync(
                [
                    .init(from: base, to: dst.baseAddress!, bytes: n / 2),
                    .init(from: base + pageValuesOffset, to: dst.baseAddress! + n / 2, bytes: n / 2),
                ], direction: .toHost)
        }
        return KVBlock(key: key, elementType: elementType, rowWidth: shape.rowWidth, payload: bytes)
    }

    // MARK: Save (HBM -> DRAM -> disk)

    /// Saves an HBM-resident block down the hierarchy, asynchronously: the copy engine moves it
    /// to DRAM, then (write-through, or when DRAM must make room) it goes to disk. Blocks the
    /// caller while `maxSavesInFlight` saves are pending (back-pressure).
    ///
    /// `extending`: a partial copy of the block's first rows that `savePartials` put below (the
    /// block filled up since): only the rows after it cross the link, and the two become the block
    /// (the partial copy is forgotten). When that copy is gone, the block stays in HBM alone until
    /// an eviction copies it down whole (`.inHBM`).
    @discardableResult
    public func save(_ key: BlockKey, placement: Placement = .keepInDRAM, extending previous: BlockKey? = nil)
        -> SaveTicket
    {
        let ticket = SaveTicket(key: key)
        guard configuration.lowerTiers else {
            ticket.finish(hbm.contains(key) ? .inHBM : .failed(StoreError.notInHBM(key).description))
            return ticket
        }
        // The session stays pinned from the page lookup until the copy engine has read the page,
        // so no eviction can free (and hand out again) the page while its bytes are being saved.
        guard let page = hbm.pinSession(ifResident: key) else {
            // Evicted before the save began: eviction copies a block down before freeing it.
            if dram.contains(key) {
                ticket.finish(.inDRAM)
            } else if disk.contains(key) {
                ticket.finish(.onDisk)
            } else {
                ticket.finish(.failed(StoreError.notInHBM(key).description))
            }
            return ticket
        }
        let from = previous.map { min($0.count, key.count) } ?? 0
        let base = UnsafeRawPointer(arena.pointer(page))
        let rows = RowsToSave(
            keys: base, values: base + pageValuesOffset, rows: from..<key.count, key: key, previous: previous,
            ticket: ticket)
        saveRows([rows], partial: false, placement: placement) { [self] in hbm.unpinSession(key.session) }
        return ticket
    }

    /// Saves the first `key.count` rows of blocks the decoder is still filling, each in its
    /// `page` (reserved by the caller, which writes only later rows meanwhile and keeps the page
    /// until `copied` has run), as partial blocks `key`, in DRAM: only rows from `previous`'s
    /// count on cross the link (one transfer for them all), merged there with that earlier
    /// partial copy, which is then forgotten. Partial copies go to neither the remote tier nor
    /// (unless DRAM pushes them there) the disk: the complete block replaces them
    /// (`save(_:extending:)`).
    public func savePartials(
        _ parts: [(page: PageID, key: BlockKey, previous: BlockKey?)], copied: @escaping @Sendable () -> Void
    ) {
        guard configuration.lowerTiers, !parts.isEmpty else { return copied() }
        let rows = parts.map { part -> RowsToSave in
            let base = UnsafeRawPointer(arena.pointer(part.page))
            let from = part.previous.map { min($0.count, part.key.count) } ?? 0
            return RowsToSave(
                keys: base, values: base + pageValuesOffset, rows: from..<part.key.count, key: part.key,
                previous: part.previous, ticket: SaveTicket(key: part.key))
        }
        saveRows(rows, partial: true, placement: .keepInDRAM, copied: copied)
    }

    private var rowBytes: Int { shape.rowWidth * elementType.byteWidth }

    /// Rows `rows` of one block (keys from `keys`, values from `values`, rows counted from the
    /// block's first) to save as `key`'s block, after `previous`'s rows when extending.
    private struct RowsToSave {
        let keys: UnsafeRawPointer
        let values: UnsafeRawPointer
        let rows: Range<Int>
        let key: BlockKey
        let previous: BlockKey?
        let ticket: SaveTicket
    }

    /// Copies the rows of `blocks` out over the link (one transfer), then on `writeback` makes
    /// each its key's block in DRAM (after its `previous`'s rows when extending) and, for
    /// complete blocks, hands it to the remote tier and writes it through. `copied` runs once the
    /// copy engine has read the rows. One save slot for the batch (back-pressure).
    private func saveRows(
        _ blocks: [RowsToSave], partial: Bool, placement: Placement, copied: @escaping @Sendable () -> Void
    ) {
        saveCondition.withLock { for b in blocks { savingSessions[b.key.session, default: 0] += 1 } }
        saveSlots.wait()
        inFlight.add(1)
        let rb = rowBytes
        let pieces = blocks.flatMap { b in
            [
                (b.keys + b.rows.lowerBound * rb, b.rows.count * rb),
                (b.values + b.rows.lowerBound * rb, b.rows.count * rb),
            ]
        }
        let jobs = blocks.map { (key: $0.key, previous: $0.previous, ticket: $0.ticket, bytes: 2 * $0.rows.count * rb) }
        copyEngine.copyOut(pieces: pieces) { [self] payload in
            copied()
            writeback.async { [self] in
                defer {
                    inFlight.add(-1)
                    saveSlots.signal()
                    saveCondition.withLock {
                        for job in jobs {
                            let left = savingSessions[job.key.session, default: 1] - 1
                            savingSessions[job.key.session] = left > 0 ? left : nil
                        }
                        saveCondition.broadcast()
                    }
                }
                var at = 0
                for job in jobs {
                    let rows = Array(payload[at..<(at + job.bytes)])
                    at += job.bytes
                    hbm.countSavedDown(bytes: job.bytes)
                    finishSave(job.key, rows: rows, after: job.previous, partial: partial, placement: placement,
                        ticket: job.ticket)
                }
            }
        }
    }

    /// On `writeback`: one block of a `saveRows` batch.
    private func finishSave(
        _ key: BlockKey, rows: [UInt8], after previous: BlockKey?, partial: Bool, placement: Placement,
        ticket: SaveTicket
    ) {
        guard let block = assemble(key, rows: rows, after: previous) else {
            ticket.finish(.inHBM)  // the earlier rows are gone: an eviction copies the block down whole
            return
        }
        do {
            // A partial copy replaces any older one under its key in DRAM (a turn that failed);
            // one on disk is overwritten if this one goes there, and no turn reads partial copies
            // (only the saves that extend them), so the disk tier's queue is not asked here.
            if partial { _ = dram.remove(key) }
            let inDRAM = try insertIntoDRAM(block, arrival: .saved)
            if !partial {
                remote?.put(block)  // written behind, on the remote tier's queue
                if placement == .writeThrough && inDRAM { try writeToDisk(block) }
            }
            ticket.finish(placement == .writeThrough || !inDRAM ? .onDisk : .inDRAM)
        } catch {
            ticket.finish(.failed("\(error)"))
        }
    }

    /// On `writeback`: `key`'s block from the rows just copied out (keys then values), after the
    /// rows of the partial copy `previous` (from DRAM or disk; forgotten once merged). nil when
    /// that copy is gone or does not fit.
    private func assemble(_ key: BlockKey, rows payload: [UInt8], after previous: BlockKey?) -> KVBlock? {
        guard let previous else {
            return KVBlock(key: key, elementType: elementType, rowWidth: shape.rowWidth, payload: payload)
        }
        let rb = rowBytes
        let head = previous.count * rb
        // Usually still in DRAM (removed from there, the disk tier not asked); else on disk, if
        // DRAM pushed it there.
        var earlier = dram.get(previous, recordLookup: false)
        if earlier != nil {
            _ = dram.remove(previous)
        } else {
            if case .hit(let b) = readFromDisk(previous) { earlier = b }
            _ = try? disk.delete(previous)
        }
        guard let earlier, earlier.payload.count == 2 * head, payload.count == 2 * (key.count - previous.count) * rb
        else { return nil }
        let tail = payload.count / 2
        var bytes = [UInt8]()
        bytes.reserveCapacity(2 * key.count * rb)
        bytes += earlier.payload[0..<head]
        bytes += payload[0..<tail]
        bytes += earlier.payload[head...]
        bytes += payload[tail...]
        return KVBlock(key: key, elementType: elementType, rowWidth: shape.rowWidth, payload: bytes)
    }

    /// Waits until every save issued so far has finished.
    public func waitForSaves() {
        copyEngine.waitUntilIdle()
        writeback.sync {}
    }

    /// Waits until no save of a namespace `matches` accepts is in flight (saves of other
    /// sessions go on): what a turn waits for before it writes its own namespaces.
    public func waitForSaves(of matches: (String) -> Bool) {
        saveCondition.lock()
        while savingSessions.keys.contains(where: matches) { saveCondition.wait() }
        saveCondition.unlock()
    }

    /// Puts a block into DRAM, making room by the policy. When the policy would evict the block's
    /// own session before enough others (it is needed later than everything DRAM holds: a chat
    /// that just finished while queued chats fill DRAM), the block is kept out of DRAM instead:
    /// a saved or demoted block goes to disk, a promoted one (it came from disk) stays where it
    /// is. Returns whether the block is in DRAM.
    @discardableResult
    private func insertIntoDRAM(_ block: KVBlock, arrival: DRAMTier.Arrival) throws(StoreError) -> Bool {
        var room = true
        for _ in 0..<8 where room {
            switch dram.insert(block, arrival: arrival) {
            case .stored:
                return true
            case .tooLarge(let bytes, let capacity):
                throw .dramTooSmall(blockBytes: bytes, capacity: capacity)
            case .needsRoom(let bytes):
                room = try makeRoomInDRAM(bytes: bytes, for: evictionRanker(of: block.key))
            }
        }
        if arrival == .saved || !disk.contains(block.key) { try writeToDisk(block) }
        return false
    }

    /// The session a block in DRAM is evicted with: a running or queued session that reads it
    /// from another namespace and is needed before the namespace's own session, else that one.
    func evictionRanker(of key: BlockKey) -> String { lock.withLock { borrowed.ranker(of: key) } }

    /// Demotes whole sessions (policy's choice) from DRAM to disk until `bytes` are free, among
    /// those the policy would evict before `session` (the one whose block needs the room); false
    /// when those are not enough. A session's blocks here are its chain (`BorrowedBlocks`): its
    /// namespace's blocks less those ranked with a session needed sooner, and the blocks of other
    /// namespaces ranked with it. When the disk tier cannot take a block (degraded, or full of
    /// the session being saved) the block is dropped instead: it is recomputed when needed, and
    /// the save that needed the room goes on.
    private func makeRoomInDRAM(bytes: Int, for session: String) throws(StoreError) -> Bool {
        let chains = lock.withLock { borrowed }
        func keys(of s: String) -> [BlockKey] {
            let own = dram.keys(session: s)
            guard !chains.isEmpty else { return own }
            let lent = (chains.byBorrower[s] ?? []).flatMap { span in
                (0..<shape.layers).map {
                    BlockKey(model: model, session: span.session, layer: $0, start: span.start, count: span.count)
                }.filter { dram.contains($0) }
            }
            return own.filter { chains.ranker(of: $0) == s } + lent
        }
        let candidates = chains.isEmpty ? dram.sessions : Set(dram.sessions).union(chains.byBorrower.keys).sorted()
        guard
            let victims = policy.victims(
                placing: session, among: candidates, bytesNeeded: bytes,
                sizeOf: { chains.isEmpty ? dram.bytes(session: $0) : dram.bytes(of: keys(of: $0)) })
        else { return false }
        for v in victims {
            for key in keys(of: v) {
                guard let block = dram.get(key, recordLookup: false) else { continue }
                var departure = DRAMTier.Departure.demoted
                if !disk.contains(key) {
                    do {
                        try writeToDisk(block)
                    } catch .disk(let e) where Self.dropsInsteadOfFailing(e) {
                        departure = .dropped
                    }
                }
                _ = dram.remove(key, departure: departure)
            }
        }
        return true
    }

    /// Disk errors after which a block leaving DRAM is dropped rather than failing the save.
    private static func dropsInsteadOfFailing(_ error: DiskTierError) -> Bool {
        switch error {
        case .invalidBlock, .closed: return false
        default: return true
        }
    }

    /// Writes a block to disk, deleting the policy's victims there when the disk tier is full.
    private func writeToDisk(_ block: KVBlock) throws(StoreError) {
        for attempt in 0..<4 {
            do {
                try disk.put(block, sync: configuration.syncEveryDiskWrite)
                if !configuration.syncEveryDiskWrite { lock.withLock { unsyncedWrites += 1 } }
                return
            } catch .full {
                guard attempt < 3 else { break }
                let candidates = disk.sessions(model: model).filter { $0 != block.key.session }
                let sizes = Dictionary(
                    uniqueKeysWithValues: candidates.map { s in
                        (s, disk.keys(model: model, session: s).reduce(0) { $0 + (disk.storedBytes(of: $1) ?? 0) })
                    })
                let victims = policy.victims(among: candidates, bytesNeeded: block.payload.count) { sizes[$0] ?? 0 }
                if victims.isEmpty { break }
                for v in victims {
                    do { _ = try disk.deleteSession(model: model, session: v) } catch { throw .disk(error) }
                }
            } catch {
                throw .disk(error)
            }
        }
        throw .disk(
            .full(
                requestedBytes: block.payload.count, storedBytes: disk.stats.storedBytes,
                capacityBytes: disk.capacityBytes))
    }

    // MARK: Load (disk -> DRAM -> HBM), layer by layer

    /// Starts moving a session's blocks for `layers` into HBM. Layer l is signalled on the
    /// handle as soon as its blocks are there, while later layers keep moving, at most
    /// `readAhead` layers ahead of the layer the consumer last waited for (the paper's read
    /// buffer; nil = no limit). The session's pages are pinned until the handle is released.
    public func load(
        session: String, layers: Range<Int>? = nil, readAhead: Int? = nil, only include: ((BlockKey) -> Bool)? = nil
    ) -> LoadHandle {
        load(sessions: [session], layers: layers, readAhead: readAhead, only: include)
    }

    /// The same for blocks stored under several sessions' namespaces (a session that shares
    /// another's prefix), in one handle: one load moves every namespace's layer l before layer
    /// l + 1, so the read buffer never waits for a layer of one namespace while another's is due.
    public func load(
        sessions: [String], layers: Range<Int>? = nil, readAhead: Int? = nil,
        only include: ((BlockKey) -> Bool)? = nil
    ) -> LoadHandle {
        let layers = layers ?? 0..<shape.layers
        let sessions = Array(Set(sessions)).sorted()
        var all: [Int: [BlockKey]] = [:]
        for s in sessions {
            for (layer, keys) in blockKeys(session: s) where layers.contains(layer) { all[layer, default: []] += keys }
        }
        let keysByLayer = include.map { f in all.mapValues { $0.filter(f) } } ?? all
        // The blocks to load are pinned from now until the handle is released (their pages, once
        // in HBM, are not evicted); the rest of those sessions' pages may be.
        let pinned = keysByLayer.values.flatMap { $0 }
        hbm.pin(keys: pinned)
        for s in sessions { policy.touch(session: s) }
        let handle = LoadHandle(session: sessions.first ?? "", layers: layers) { [weak self] _ in
            self?.hbm.unpin(keys: pinned)
        }
        loadsWaiting.add(1)
        loader.async { [self] in
            loadsWaiting.add(-1)
            for l in layers {
                if let depth = readAhead { handle.waitForRoom(layer: l, depth: max(0, depth)) }
                loadsWaiting.add(1)
                loadLayer(l, keys: keysByLayer[l] ?? [], into: handle)
                loadsWaiting.add(-1)
            }
        }
        return handle
    }

    private func loadLayer(_ layer: Int, keys: [BlockKey], into handle: LoadHandle) {
        var result = LayerLoad(layer: layer, pages: [], missing: [])
        var transfers: [(source: [UInt8], destination: UnsafeMutableRawPointer)] = []
        var newPages: [(BlockKey, PageID, Int)] = []
        // Blocks only the remote tier holds come in one pipeline for the layer.
        let remoteWanted =
            remote.map { r in
                Set(keys.filter { r.knows($0) && !isInHBM($0) && !dram.contains($0) && !disk.contains($0) })
            } ?? []
        let remoteStart = DispatchTime.now().uptimeNanoseconds
        var remoteNanos: UInt64?
        let remoteBlocks = remote?.get(Array(remoteWanted)) ?? [:]
        if !remoteWanted.isEmpty { remoteNanos = DispatchTime.now().uptimeNanoseconds - remoteStart }
        for key in keys {
            if let page = hbm.page(of: key) {
                result.pages.append((key, page))
                result.fromHBM += 1
                result.sources[key] = .hbm
                hbm.countHit()
                continue
            }
            var block = dram.get(key)
            var source = Tier.dram
            if block != nil {
                result.fromDRAM += 1
            } else {
                source = .disk
                switch readFromDisk(key) {
                case .hit(let b):
                    block = b
                    result.fromDisk += 1
                    result.diskBytes += b.payload.count
                    try? insertIntoDRAM(b, arrival: .promoted)
                default:
                    if let b = remoteWanted.contains(key) ? remoteBlocks[key] : remoteFallback(key, nanos: &remoteNanos)
                    {
                        block = b
                        source = .remote
                        result.fromRemote += 1
                        result.remoteBytes += b.payload.count
                        try? insertIntoDRAM(b, arrival: .promoted)
                    }
                }
            }
            // A block stored under another KV layout (the state directory was written with
            // another `kv_precision`) is a miss, never copied into a page of this layout.
            guard let block, block.elementType == elementType, block.rowWidth == shape.rowWidth,
                block.payload.count == blockPayloadBytes(key)
            else {
                result.missing.append(key)
                hbm.countMiss()
                continue
            }
            // The blocks this load needs are pinned (`keyPins`); every other page may go, the
            // loading sessions' own included: sparing a session whose namespace holds a prefix
            // that others share would leave a full arena with nothing to evict.
            guard let page = try? allocatePage(sparing: nil) else {
                result.missing.append(key)
                hbm.countMiss()
                continue
            }
            result.sources[key] = source
            transfers.append((source: block.payload, destination: arena.pointer(page)))
            newPages.append((key, page, block.payload.count))
        }
        result.remoteReadSeconds = remoteNanos.map { Double($0) / 1e9 }
        let base = result
        let placed = newPages
        let finish: @Sendable () -> Void = { [self] in
            var r = base
            // Another load of the same block (a session sharing it) may have got there first.
            r.pages += hbm.deliver(placed)
            r.pages.sort { $0.key.start < $1.key.start }
            handle.complete(r)
        }
        if transfers.isEmpty {
            finish()
        } else {
            copyEngine.copy(payloads: transfers, valuesOffset: pageValuesOffset) { finish() }
        }
    }

    /// A block read from the disk tier, taking at least the modelled disk's time for it.
    private func readFromDisk(_ key: BlockKey) -> DiskReadResult {
        let start = DispatchTime.now().uptimeNanoseconds
        let result = disk.get(key)
        if case .hit(let b) = result {
            let seconds = configuration.diskReadModel.modelledSeconds(bytes: b.payload.count)
            if seconds > 0 { CopyEngine.wait(until: start + UInt64((seconds * 1e9).rounded(.up))) }
        }
        return result
    }

    /// A block the disk tier should have had but did not serve (damaged, dropped), from the
    /// remote tier when it holds it.
    /// `nanos` accumulates the time the read took.
    private func remoteFallback(_ key: BlockKey, nanos: inout UInt64?) -> KVBlock? {
        guard let remote, remote.knows(key) else { return nil }
        let start = DispatchTime.now().uptimeNanoseconds
        defer { nanos = (nanos ?? 0) + (DispatchTime.now().uptimeNanoseconds - start) }
        return remote.get([key])[key]
    }

    /// Moves a session's blocks from disk (or the remote tier) up to DRAM ahead of use
    /// (scheduler-aware prefetch).
    public func prefetch(session: String, completion: (@Sendable () -> Void)? = nil) {
        prefetch(session: session, include: nil, completion: completion)
    }

    /// The same for just the blocks of the session's namespace that `only` accepts (another
    /// chat's prefix a queued chat reads).
    public func prefetch(session: String, only: @escaping @Sendable (BlockKey) -> Bool) {
        prefetch(session: session, include: only, completion: nil)
    }

    private func prefetch(
        session: String, include: (@Sendable (BlockKey) -> Bool)?, completion: (@Sendable () -> Void)?
    ) {
        prefetcher.async { [self] in
            for key in disk.keys(model: model, session: session)
            where !dram.contains(key) && !isInHBM(key) && include?(key) != false {
                while loadsWaiting.value > 0 { usleep(200) }  // a turn's load goes first
                if case .hit(let b) = readFromDisk(key) { try? insertIntoDRAM(b, arrival: .promoted) }
            }
            if let remote {
                let wanted = remote.knownKeys(session: session, model: model).filter {
                    !dram.contains($0) && !isInHBM($0) && !disk.contains($0) && include?($0) != false
                }
                for b in remote.get(wanted).values { try? insertIntoDRAM(b, arrival: .promoted) }
            }
            completion?()
        }
    }

    /// Every block of the session across tiers, by layer, in token order.
    /// Read from the top tier down: a block moving down (demoted from HBM, pushed out of DRAM)
    /// is copied below before it leaves the tier above, so one read in this order never misses
    /// it (read bottom up, a block could leave DRAM for disk between the two reads and be in
    /// neither, and its turn would recompute it).
    public func blockKeys(session: String) -> [Int: [BlockKey]] {
        var all = Set(hbm.keys(session: session).filter { $0.model == model })
        all.formUnion(dram.keys(session: session, model: model))
        all.formUnion(disk.keys(model: model, session: session))
        if let remote { all.formUnion(remote.knownKeys(session: session, model: model)) }
        return Dictionary(grouping: all.sorted { $0.start < $1.start }, by: \.layer)
    }

    // MARK: The store's face (health, what the daemon reports)

    /// The disk tier's health: what `/healthz` and the daemon's log report.
    public var diskHealth: DiskTierHealth { disk.health }

    /// Calls `body` on the disk tier's queue whenever its health changes.
    public func onDiskHealthChange(_ body: @escaping @Sendable (DiskTierHealth) -> Void) { disk.onHealthChange(body) }

    /// The directory of the disk tier's database.
    public var diskDirectory: String { disk.directory }

    // MARK: Placement, demotion, deletion

    /// The scheduler's order of use: `running` (turns running now) first, then `sessions`
    /// (queued, next first); the hint-driven policy evicts by it. `borrowed`: for each of them,
    /// the blocks it reads from other namespaces (a shared prefix), which DRAM's eviction then
    /// ranks with it rather than with their namespace (`BorrowedBlocks`; not under LRU, which
    /// does not look ahead).
    public func setUpcoming(_ sessions: [String], running: [String] = [], borrowed: [String: [BlockSpan]] = [:]) {
        policy.setUpcoming(sessions, running: running)
        let chains =
            configuration.policy == .hintDriven
            ? BorrowedBlocks(order: running + sessions, borrowed: borrowed) : BorrowedBlocks()
        lock.withLock { self.borrowed = chains }
    }

    /// Moves a session down to `tier` (`.dram`: out of HBM; `.disk`: out of HBM and DRAM).
    public func demote(session: String, to tier: Tier) throws(StoreError) {
        waitForSaves()
        try demoteFromHBM(session: session)
        guard tier == .disk else { return }
        for key in dram.keys(session: session) {
            guard let block = dram.get(key, recordLookup: false) else { continue }
            if !disk.contains(key) { try writeToDisk(block) }
            _ = dram.remove(key, departure: .demoted)
        }
    }

    /// Forgets one block in every tier (the engine replaces a session's partial last block).
    public func remove(_ key: BlockKey) throws(StoreError) {
        waitForSaves()
        hbm.free(session: key.session) { $0 == key }
        _ = dram.remove(key)
        do { _ = try disk.delete(key) } catch { throw .disk(error) }
        remote?.retire([key])
    }

    /// Forgets blocks in this node's tiers only (HBM, DRAM, disk); the remote tier keeps its
    /// copies (a newer version of the chat, written by another node, names them).
    public func forgetLocally(_ keys: [BlockKey]) throws(StoreError) {
        guard !keys.isEmpty else { return }
        waitForSaves()
        for key in keys {
            hbm.free(session: key.session) { $0 == key }
            _ = dram.remove(key)
            do { _ = try disk.delete(key) } catch { throw .disk(error) }
        }
    }

    /// Forgets a session in every tier.
    public func delete(session: String) throws(StoreError) {
        waitForSaves()
        hbm.free(session: session) { $0.session == session }
        _ = dram.removeAll(session: session)
        do { _ = try disk.deleteSession(model: model, session: session) } catch { throw .disk(error) }
        remote?.retire(session: session, model: model)
        policy.forget(session: session)
    }

    /// Writes every DRAM block that is not yet on disk, then syncs the disk tier, then waits for
    /// the writes queued for the remote tier (what a node does before it is drained).
    public func flush() throws(StoreError) {
        waitForSaves()
        for s in dram.sessions {
            for key in dram.keys(session: s) where !disk.contains(key) {
                if let block = dram.get(key, recordLookup: false) { try writeToDisk(block) }
            }
        }
        do { try disk.flush() } catch { throw .disk(error) }
        waitForRemoteWrites()
    }

    /// Stores a small record (the engine's session state) in the disk tier with the same
    /// durability as blocks: acknowledged when RocksDB has it, synced by the next group commit.
    public func putMetadata(name: String, value: [UInt8]) throws(StoreError) {
        do {
            try disk.putMetadata(model: model, name: name, value: value, sync: configuration.syncEveryDiskWrite)
        } catch {
            throw .disk(error)
        }
        if !configuration.syncEveryDiskWrite { lock.withLock { unsyncedWrites += 1 } }
        guard let remote else { return }
        // The record goes out after the blocks saved before it, so a node that reads it finds them.
        publisher.async { [self] in
            waitForSaves()
            remote.putMetadata(model: model, name: name, value: value)
        }
    }

    /// Names of this model's records on the disk tier that start with `prefix`.
    public func metadataNames(prefix: String = "") -> [String] { disk.metadataNames(model: model, prefix: prefix) }

    /// A record from the disk tier, else from the remote tier (written by any node), else nil.
    public func metadata(name: String) -> [UInt8]? {
        disk.metadata(model: model, name: name) ?? remote?.metadata(model: model, name: name)
    }

    /// Deletes a record from the disk and remote tiers.
    public func deleteMetadata(name: String) throws(StoreError) {
        do { try disk.deleteMetadata(model: model, name: name) } catch { throw .disk(error) }
        remote?.deleteMetadata(model: model, name: name)
    }

    /// Waits until the saves and records issued so far have gone out to the remote tier (or were
    /// dropped): tests, and a node about to hand its chats over.
    public func waitForRemoteWrites() {
        waitForSaves()
        publisher.sync {}
        remote?.waitForWrites()
    }

    /// Records that the remote tier holds `keys` (a session record read from it names them), so
    /// loads look for them there.
    public func adoptRemote(_ keys: [BlockKey]) {
        remote?.adopt(keys)
    }

    /// Closes the disk tier cleanly; with `flushingDRAM` (the default) DRAM-only blocks are
    /// written to disk first, otherwise only what is already on disk is synced and kept.
    /// The disk tier is closed even when the flush fails (a degraded tier); the error then says
    /// what was not written.
    public func close(flushingDRAM: Bool = true) throws(StoreError) {
        flushTimer?.cancel()
        flushTimer = nil
        var failure: StoreError?
        do throws(StoreError) {
            if flushingDRAM {
                try flush()
            } else {
                waitForSaves()
                do { try disk.flush() } catch { throw StoreError.disk(error) }
            }
        } catch {
            failure = error
        }
        do { try disk.close() } catch { failure = failure ?? .disk(error) }
        publisher.sync {}
        remote?.waitForWrites()
        if let failure { throw failure }
    }

    // MARK: Introspection

    public var stats: StoreStats {
        StoreStats(
            hbm: hbm.stats, dram: dram.stats, disk: disk.stats.tierStats, link: copyEngine.counters,
            savesInFlight: inFlight.value, remote: remote?.stats)
    }

    public func placement(session: String) -> SessionPlacement {
        let byLayer = blockKeys(session: session)
        var layers: [[SessionPlacement.BlockPlacement]] = []
        for l in 0..<shape.layers {
            layers.append((byLayer[l] ?? []).map { key in .init(tokens: key.tokens, tiers: tiers(of: key)) })
        }
        return SessionPlacement(session: session, layers: layers)
    }

    /// The tiers holding `key`, top to bottom (empty: nowhere).
    public func tiers(of key: BlockKey) -> [Tier] {
        var tiers: [Tier] = []
        if isInHBM(key) { tiers.append(.hbm) }
        if dram.contains(key) { tiers.append(.dram) }
        if disk.contains(key) { tiers.append(.disk) }
        if let remote, remote.knows(key) { tiers.append(.remote) }
        return tiers
    }

    /// Sessions known to any tier.
    public var sessions: [String] {
        var s = Set(disk.sessions(model: model))
        s.formUnion(dram.sessions)
        s.formUnion(hbm.sessions)
        return s.sorted()
    }
}

/// A lock-guarded integer.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var v = 0
    func add(_ d: Int) { lock.withLock { v += d } }
    var value: Int { lock.withLock { v } }
}
