import XCTest

@testable import KVTierStore

final class ByteSizeTests: XCTestCase {
    func testSizesAsPeopleWriteThem() {
        XCTAssertEqual(ByteSize.parse("512MiB"), 512 << 20)
        XCTAssertEqual(ByteSize.parse(" 4 GiB "), 4 << 30)
        XCTAssertEqual(ByteSize.parse("1.5KiB"), 1536)
        XCTAssertEqual(ByteSize.parse("20GB"), 20_000_000_000)
        XCTAssertEqual(ByteSize.parse("1048576"), 1 << 20)
        XCTAssertEqual(ByteSize.parse("12B"), 12)
        for bad in ["", "MiB", "-1MiB", "1e30GiB", "infGiB", "12 parsecs", "0x10"] {
            XCTAssertNil(ByteSize.parse(bad), bad)
        }
    }
}
