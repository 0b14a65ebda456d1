import XCTest

@testable import KVTierStore

/// The HBM page table's index by namespace agrees with its pages through inserts, replacements
/// and removals, so that a session's resident blocks are found without walking every page.
final class HBMPageTableTests: XCTestCase {
    private let model = ModelFingerprint(value: 7)

    private func key(_ session: String, _ start: Int) -> BlockKey {
        BlockKey(model: model, session: session, layer: start % 3, start: start, count: 16)
    }

    func testTheNamespaceIndexFollowsEveryChange() throws {
        var table = HBMPageTable()
        var reference: [BlockKey: PageID] = [:]
        var rng = SystemRandomNumberGenerator()
        let sessions = ["a", "b", "c~1", "c"]
        for step in 0..<2_000 {
            let k = key(sessions[Int.random(in: 0..<sessions.count, using: &rng)], Int.random(in: 0..<40, using: &rng))
            switch Int.random(in: 0..<3, using: &rng) {
            case 0, 1:
                let page = PageID(index: step, arena: 1)
                table[k] = page
                reference[k] = page
            default:
                XCTAssertEqual(table.removeValue(forKey: k), reference.removeValue(forKey: k))
            }
        }
        XCTAssertEqual(table.count, reference.count)
        for s in sessions {
            XCTAssertEqual(table.keys(session: s), Set(reference.keys.filter { $0.session == s }), s)
        }
        XCTAssertEqual(Set(table.sessions), Set(reference.keys.map(\.session)))
        for (k, page) in reference { XCTAssertEqual(table[k], page) }

        // Emptied namespaces leave the index.
        for k in reference.keys where k.session == "a" { table[k] = nil }
        XCTAssertEqual(table.keys(session: "a"), [])
        XCTAssertFalse(table.sessions.contains("a"))
    }
}
