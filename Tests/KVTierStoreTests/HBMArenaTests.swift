import Foundation
import KVTierModel
import XCTest

@testable import KVTierStore

final class HBMArenaTests: XCTestCase {
    func testAllocationIsAllOrNothingAndNeverOvercommits() throws {
        // 1000-byte pages have a 1024-byte stride; 10.5 strides of capacity hold 10 pages.
        let arena = try HBMArena(capacityBytes: 10 * 1024 + 512, pageBytes: 1000)
        XCTAssertEqual(arena.pageCount, 10)
        XCTAssertEqual(arena.pageStride, 1024)
        XCTAssertEqual(arena.freePages, 10)
        XCTAssertEqual(arena.allocate(count: 0), [])

        var held: [[PageID]] = []
        while let pages = arena.allocate(count: 3) {
            held.append(pages)
            XCTAssertLessThanOrEqual(arena.usedBytes, arena.capacityBytes)
        }
        XCTAssertEqual(held.count, 3)
        XCTAssertEqual(arena.freePages, 1)
        XCTAssertNil(arena.allocate(count: 2), "must refuse rather than hand out part of a request")
        XCTAssertEqual(arena.freePages, 1, "a refused request takes nothing")
        let last = try XCTUnwrap(arena.allocate(count: 1))
        XCTAssertNil(arena.allocate(count: 1))
        XCTAssertEqual(arena.freePages, 0)
        XCTAssertEqual(arena.usedBytes, 10 * 1024)
        XCTAssertLessThanOrEqual(arena.usedBytes, arena.capacityBytes)
        XCTAssertEqual(arena.refusedAllocations, 3)

        let all = held.flatMap { $0 } + last
        XCTAssertEqual(Set(all).count, 10, "no page handed out twice")
        XCTAssertEqual(Set(all.map(\.index)), Set(0..<10))

        arena.free(held[1])
        XCTAssertEqual(arena.freePages, 3)
        for p in held[1] { XCTAssertFalse(arena.isAllocated(p)) }
        let again = try XCTUnwrap(arena.allocate(count: 3))
        XCTAssertEqual(Set(again), Set(held[1]), "freed pages are reused")
        XCTAssertNil(arena.allocate(count: 1))
        XCTAssertEqual(arena.highWaterPages, 10)
        XCTAssertEqual(arena.stats.blocks, 10)
        XCTAssertEqual(arena.stats.capacityBytes, arena.capacityBytes)
    }

    func testPagesAreDisjointMemory() throws {
        let arena = try HBMArena(capacityBytes: 64 * 4096, pageBytes: 4000)
        let pages = try XCTUnwrap(arena.allocate(count: arena.pageCount))
        for (i, p) in pages.enumerated() {
            let b = arena.buffer(p)
            XCTAssertEqual(b.count, 4000)
            for j in 0..<b.count { b[j] = UInt8(truncatingIfNeeded: i &* 31 &+ j) }
        }
        for (i, p) in pages.enumerated() {
            let b = arena.buffer(p)
            XCTAssertEqual(UInt(bitPattern: b.baseAddress!) % 64, 0, "pages are cache-line aligned")
            for j in 0..<b.count where b[j] != UInt8(truncatingIfNeeded: i &* 31 &+ j) {
                XCTFail("page \(p) byte \(j) was overwritten by another page")
                break
            }
        }
    }

    func testInvalidConfigurationsAreTypedErrors() {
        XCTAssertThrowsError(try HBMArena(capacityBytes: 1 << 20, pageBytes: 0)) { error in
            XCTAssertEqual(error as? HBMArenaError, .invalidPageSize(0))
        }
        XCTAssertThrowsError(try HBMArena(capacityBytes: 100, pageBytes: 4096)) { error in
            XCTAssertEqual(error as? HBMArenaError, .capacityBelowOnePage(capacityBytes: 100, pageBytes: 4096))
            XCTAssertTrue("\(error)".contains("holds no page"))
        }
    }

    func testPageIDsOfDifferentArenasDiffer() throws {
        let a = try HBMArena(capacityBytes: 4096, pageBytes: 4096, prefault: false)
        let b = try HBMArena(capacityBytes: 4096, pageBytes: 4096, prefault: false)
        let pa = try XCTUnwrap(a.allocate(count: 1))[0]
        let pb = try XCTUnwrap(b.allocate(count: 1))[0]
        XCTAssertEqual(pa.index, pb.index)
        XCTAssertNotEqual(pa, pb)
        XCTAssertFalse(b.isAllocated(pa))
    }

    /// 8 threads allocate and free at random; after every operation: used bytes within capacity,
    /// no page held by two threads (registry), and every held page still holds its owner's bytes.
    func testConcurrentAllocateAndFreeNeverOvercommitsNorDoubleAllocates() throws {
        let arena = try HBMArena(capacityBytes: 48 * 256, pageBytes: 256)
        let registry = PageRegistry()
        let threads = 8
        let operations = 3000
        let done = DispatchGroup()
        for t in 0..<threads {
            done.enter()
            let thread = Thread {
                var rng = SplitMix64(seed: UInt64(t) &+ 1)
                var mine: [[PageID]] = []
                let tag = UInt8(t + 1)
                for op in 0..<operations {
                    if mine.isEmpty || rng.next() % 2 == 0 {
                        let n = Int(rng.next() % 6) + 1
                        if let pages = arena.allocate(count: n) {
                            registry.claim(pages, by: t)
                            for p in pages { arena.buffer(p).initializeMemory(as: UInt8.self, repeating: tag) }
                            mine.append(pages)
                        }
                    } else {
                        let pages = mine.remove(at: Int(rng.next() % UInt64(mine.count)))
                        for p in pages where arena.buffer(p).contains(where: { $0 != tag }) {
                            registry.report("thread \(t) op \(op): page \(p) was written by someone else")
                        }
                        registry.release(pages, by: t)
                        arena.free(pages)
                    }
                    if arena.usedBytes > arena.capacityBytes {
                        registry.report("thread \(t) op \(op): used \(arena.usedBytes) > capacity \(arena.capacityBytes)")
                    }
                    if arena.usedPages > arena.pageCount || arena.freePages < 0 {
                        registry.report("thread \(t) op \(op): page counts out of range")
                    }
                }
                for pages in mine {
                    registry.release(pages, by: t)
                    arena.free(pages)
                }
                done.leave()
            }
            thread.start()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 300), .success)
        XCTAssertEqual(registry.violations, [])
        XCTAssertGreaterThan(registry.claims, 0)
        XCTAssertGreaterThan(arena.refusedAllocations, 0, "the stress test should have filled the arena")
        XCTAssertEqual(arena.freePages, arena.pageCount)
        XCTAssertEqual(arena.usedBytes, 0)
    }
}

/// Which test thread holds which page; records any page claimed twice.
private final class PageRegistry: @unchecked Sendable {
    // @unchecked: all state guarded by `lock`.
    private let lock = NSLock()
    private var owner: [PageID: Int] = [:]
    private var problems: [String] = []
    private var claimCount = 0

    func claim(_ pages: [PageID], by thread: Int) {
        lock.withLock {
            claimCount += 1
            for p in pages {
                if let other = owner[p] {
                    problems.append("page \(p) handed to thread \(thread) while thread \(other) holds it")
                }
                owner[p] = thread
            }
        }
    }

    /// Called before the pages go back to the arena, so a page re-allocated by another thread
    /// is never still registered here.
    func release(_ pages: [PageID], by thread: Int) {
        lock.withLock {
            for p in pages {
                if owner[p] != thread { problems.append("thread \(thread) frees page \(p) it does not hold") }
                owner[p] = nil
            }
        }
    }

    func report(_ problem: String) {
        lock.withLock { problems.append(problem) }
    }

    var violations: [String] { lock.withLock { Array(problems.prefix(10)) } }
    var claims: Int { lock.withLock { claimCount } }
}


