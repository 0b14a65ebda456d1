import CKVTierKernels
import XCTest

@testable import KVTierStore

final class ChecksumTests: XCTestCase {
    func testCRC32CKnownValues() {
        XCTAssertEqual(Checksum.crc32c(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(Checksum.crc32c([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(Checksum.crc32c([]), 0)
    }

    func testHardwareAndTablePathsAgree() {
        var bytes = [UInt8](repeating: 0, count: 1001)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        let fast = Checksum.crc32c(bytes)
        _ = kvt_set_cpu_level(Int32(KVT_CPU_PORTABLE))
        let slow = Checksum.crc32c(bytes)
        _ = kvt_set_cpu_level(Int32(KVT_CPU_AVX512))
        XCTAssertEqual(fast, slow)
        bytes[500] ^= 1
        XCTAssertNotEqual(Checksum.crc32c(bytes), fast)
    }
}
