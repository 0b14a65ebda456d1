import Foundation

/// Names one page of one `HBMArena`. Ids are only meaningful to the arena that handed them out;
/// passing one to another arena is a programmer error and traps.
public struct PageID: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// Page number inside its arena, 0 ..< `pageCount`.
    public let index: Int
    /// Serial number of the arena that allocated the page.
    let arena: UInt32

    init(index: Int, arena: UInt32) {
        self.index = index
        self.arena = arena
    }

    public static func < (a: PageID, b: PageID) -> Bool { (a.arena, a.index) < (b.arena, b.index) }

    public var description: String { "hbm\(arena)#\(index)" }
}

/// Why an arena cannot be created.
public enum HBMArenaError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidPageSize(Int)
    case capacityBelowOnePage(capacityBytes: Int, pageBytes: Int)
    case tooManyPages(Int)

    public var description: String {
        switch self {
        case .invalidPageSize(let bytes):
            return "HBM page size must be positive, got \(bytes) bytes"
        case .capacityBelowOnePage(let capacity, let page):
            return "HBM capacity of \(capacity) bytes holds no page of \(page) bytes; raise the capacity or shrink the blocks"
        case .tooManyPages(let count):
            return "HBM arena would have \(count) pages; at most \(Int32.max) are supported, use larger pages"
        }
    }
}

/// The simulated device memory: one arena allocated up front and cut into fixed-size pages.
///
/// The store uses one page per block (one layer's keys and values for `blockTokens` tokens,
/// `blockTokens * rowWidth * elementBytes * 2` bytes). Allocation is all-or-nothing and never
/// overcommits: `allocate(count:)` returns nil when fewer than `count` pages are free, and the
/// caller then evicts (demotes some session's pages to DRAM and frees them), waits for a
/// release, or fails the request. Nothing here ever allocates memory past the arena.
///
/// Thread-safety: the free list and the in-use map are guarded by `lock` (an `NSLock`);
/// `allocate`, `free`, `pointer` and the counters may be called from any thread.
///
/// Ownership of page *contents* (the bytes behind `pointer(_:)`) is not locked; it follows one
/// rule, which the store keeps:
/// * whoever allocated a page owns it until it calls `free`;
/// * while a transfer into or out of a page is queued on the `CopyEngine`, the copy engine's
///   queue owns the bytes: only that queue writes (or reads) them, and the owner touches them
///   again only after the transfer's completion has run;
/// * the decoder reads only pages it was handed after their load completed, and writes only
///   pages handed to it for new tokens; a page is never freed while a transfer or a reader
///   still uses it.
/// Raw memory is confined to this file and `CopyEngine.swift`.
public final class HBMArena: @unchecked Sendable {
    // @unchecked: `base` is immutable after init and the mutable bookkeeping below is only
    // touched while holding `lock`; page contents follow the ownership rule above.

    /// Default capacity: 512 MiB.
    public static let defaultCapacityBytes = 512 << 20
    /// Pages start on cache-line boundaries.
    static let pageAlignment = 64

    /// Usable bytes of one page.
    public let pageBytes: Int
    /// Distance between the starts of two pages (`pageBytes` rounded up to 64 bytes).
    public let pageStride: Int
    /// Number of pages in the arena.
    public let pageCount: Int
    /// Bytes the arena may use (as configured); `pageCount * pageStride` never exceeds it.
    public let capacityBytes: Int

    /// The arena's memory, `pageCount * pageStride` bytes, 4 KiB aligned. Immutable.
    private let base: UnsafeMutableRawPointer
    private let serial: UInt32

    private let lock = NSLock()
    /// Guarded by `lock`: indices of free pages, used as a stack (recently freed pages, still
    /// warm in cache, are handed out first).
    private var freeList: [Int32]
    /// Guarded by `lock`: whether page i is allocated (catches double frees).
    private var inUse: [Bool]
    /// Guarded by `lock`: allocation requests refused for lack of pages.
    private var refusals = 0
    /// Guarded by `lock`: most pages in use at once.
    private var highWater = 0

    /// Creates the arena and, with `prefault`, touches every page so that the first transfers
    /// do not pay for page faults (as device memory would not).
    public init(
        capacityBytes: Int = HBMArena.defaultCapacityBytes,
        pageBytes: Int,
        prefault: Bool = true
    ) throws(HBMArenaError) {
        guard pageBytes > 0 else { throw .invalidPageSize(pageBytes) }
        let stride = (pageBytes + HBMArena.pageAlignment - 1) / HBMArena.pageAlignment * HBMArena.pageAlignment
        let count = max(capacityBytes, 0) / stride
        guard count > 0 else { throw .capacityBelowOnePage(capacityBytes: capacityBytes, pageBytes: pageBytes) }
        guard count <= Int(Int32.max) else { throw .tooManyPages(count) }
        self.pageBytes = pageBytes
        self.pageStride = stride
        self.pageCount = count
        self.capacityBytes = capacityBytes
        let memory = UnsafeMutableRawPointer.allocate(byteCount: count * stride, alignment: 4096)
        if prefault { memory.initializeMemory(as: UInt8.self, repeating: 0, count: count * stride) }
        self.base = memory
        self.serial = ArenaSerial.next()
        self.freeList = Array((0..<Int32(count)).reversed())
        self.inUse = [Bool](repeating: false, count: count)
    }

    deinit {
        base.deallocate()
    }

    /// Takes `count` pages, all or nothing. Returns nil, taking none, when fewer than `count`
    /// pages are free: the caller must evict (demote and free pages), wait for pages to be
    /// freed, or fail the request. `count` 0 returns an empty list.
    public func allocate(count: Int) -> [PageID]? {
        precondition(count >= 0, "HBMArena.allocate: negative page count \(count)")
        return lock.withLock {
            guard count <= freeList.count else {
                refusals += 1
                return nil
            }
            var pages: [PageID] = []
            pages.reserveCapacity(count)
            for _ in 0..<count {
                let i = Int(freeList.removeLast())
                precondition(!inUse[i], "HBMArena: free list held page \(i) that is in use")
                inUse[i] = true
                pages.append(PageID(index: i, arena: serial))
            }
            highWater = max(highWater, pageCount - freeList.count)
            return pages
        }
    }

    /// Returns pages to the arena. Freeing a page twice, or a page of another arena, is a
    /// programmer error and traps. The caller must no longer use the pages' memory, and no
    /// transfer into or out of them may still be queued.
    public func free(_ pages: [PageID]) {
        lock.withLock {
            for page in pages {
                checkOwnership(page)
                precondition(inUse[page.index], "HBMArena.free: page \(page) is not allocated (double free?)")
                inUse[page.index] = false
                freeList.append(Int32(page.index))
            }
        }
    }

    /// The start of a page's `pageBytes` bytes. The page must be allocated; its contents are
    /// owned as described in the type's documentation (copy-engine queue during a transfer,
    /// the page's holder otherwise).
    public func pointer(_ page: PageID) -> UnsafeMutableRawPointer {
        lock.withLock {
            checkOwnership(page)
            precondition(inUse[page.index], "HBMArena.pointer: page \(page) is not allocated")
        }
        return base + page.index * pageStride
    }

    /// A page's bytes as a buffer of `pageBytes`; same rules as `pointer(_:)`.
    public func buffer(_ page: PageID) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: pointer(page), count: pageBytes)
    }

    /// Pages free now.
    public var freePages: Int { lock.withLock { freeList.count } }
    /// Pages allocated now.
    public var usedPages: Int { lock.withLock { pageCount - freeList.count } }
    /// Memory tied up by allocated pages (`usedPages * pageStride`), never above `capacityBytes`.
    public var usedBytes: Int { usedPages * pageStride }
    /// Most pages that were allocated at once.
    public var highWaterPages: Int { lock.withLock { highWater } }
    /// Allocation requests refused because not enough pages were free.
    public var refusedAllocations: Int { lock.withLock { refusals } }

    /// Whether the arena handed out `page` and it has not been freed since.
    public func isAllocated(_ page: PageID) -> Bool {
        lock.withLock { page.arena == serial && page.index >= 0 && page.index < pageCount && inUse[page.index] }
    }

    /// Size part of this tier's statistics (one block per page); the store adds the traffic
    /// counters it keeps.
    public var stats: TierStats {
        let used = usedPages
        return TierStats(tier: "hbm", capacityBytes: capacityBytes, usedBytes: used * pageStride, blocks: used)
    }

    /// Caller holds `lock`.
    private func checkOwnership(_ page: PageID) {
        precondition(page.arena == serial, "HBMArena: page \(page) belongs to another arena (this is hbm\(serial))")
        precondition(page.index >= 0 && page.index < pageCount, "HBMArena: page \(page) is out of range 0..<\(pageCount)")
    }
}

/// Hands out arena serial numbers so that page ids of different arenas never compare equal.
private enum ArenaSerial {
    private static let lock = NSLock()
    // Guarded by `lock`.
    nonisolated(unsafe) private static var last: UInt32 = 0

    static func next() -> UInt32 {
        lock.withLock {
            last &+= 1
            return last
        }
    }
}
