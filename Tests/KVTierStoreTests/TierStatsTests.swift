import XCTest

@testable import KVTierStore

final class TierStatsTests: XCTestCase {
    func testMergingSumsCountersAndWeighsCompression() {
        let dram = TierStats(tier: "dram", capacityBytes: 1000, usedBytes: 300, blocks: 3, hits: 4, misses: 1,
                             evictions: 2, promotions: 1, demotions: 2, bytesIn: 900, bytesOut: 400,
                             checksumFailures: 1, compressionRatio: 2)
        let disk = TierStats(tier: "disk", capacityBytes: 5000, usedBytes: 100, blocks: 1, hits: 1, misses: 3,
                             evictions: 0, promotions: 0, demotions: 0, bytesIn: 200, bytesOut: 100)
        let total = dram.merging(disk, as: "all")
        XCTAssertEqual(total.tier, "all")
        XCTAssertEqual(total.capacityBytes, 6000)
        XCTAssertEqual(total.usedBytes, 400)
        XCTAssertEqual(total.blocks, 4)
        XCTAssertEqual(total.hits, 5)
        XCTAssertEqual(total.misses, 4)
        XCTAssertEqual(total.evictions, 2)
        XCTAssertEqual(total.promotions, 1)
        XCTAssertEqual(total.demotions, 2)
        XCTAssertEqual(total.bytesIn, 1100)
        XCTAssertEqual(total.bytesOut, 500)
        XCTAssertEqual(total.checksumFailures, 1)
        // 300 stored bytes at 2x and 100 at 1x: 700 original over 400 stored.
        XCTAssertEqual(try XCTUnwrap(total.compressionRatio), 700.0 / 400.0, accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(total.hitRate), 5.0 / 9.0, accuracy: 1e-12)
        XCTAssertEqual(dram.occupancy, 0.3, accuracy: 1e-12)
        XCTAssertNil(TierStats(tier: "hbm").hitRate)
        XCTAssertNil(disk.merging(disk).compressionRatio)
        XCTAssertTrue(dram.description.contains("compression 2.0x"))
    }
}
