import Foundation
import XCTest

@testable import KVTierEngine

/// The streaming ShareGPT reader on small files written here, each read with several chunk
/// sizes so that records, strings and escapes straddle chunk boundaries.
final class ShareGPTReaderTests: XCTestCase {
    private var files: [String] = []

    override func tearDown() {
        for f in files { try? FileManager.default.removeItem(atPath: f) }
        files = []
        super.tearDown()
    }

    private func write(_ bytes: [UInt8]) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sharegpt-\(UUID().uuidString).json").path
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        files.append(path)
        return path
    }

    private func write(_ text: String) -> String { write(Array(text.utf8)) }

    private static let chunkSizes = [1, 2, 3, 7, 64, 1 << 20]

    /// Reads `path` with every chunk size; checks they all agree and returns the records and the reader.
    private func readAll(_ path: String, file: StaticString = #filePath, line: UInt = #line) throws -> ([ShareGPTConversation], ShareGPTReader) {
        var first: ([ShareGPTConversation], ShareGPTReader)? = nil
        for size in Self.chunkSizes {
            let r = try ShareGPTReader(path: path, chunkSize: size)
            let records = try r.readAll()
            XCTAssertTrue(r.isFinished, file: file, line: line)
            XCTAssertNil(try r.next(), file: file, line: line)
            if let (records0, r0) = first {
                XCTAssertEqual(records, records0, "chunk size \(size)", file: file, line: line)
                XCTAssertEqual(r.skippedRecords, r0.skippedRecords, "chunk size \(size)", file: file, line: line)
                XCTAssertEqual(r.truncatedTail, r0.truncatedTail, "chunk size \(size)", file: file, line: line)
                XCTAssertEqual(r.tailBytes, r0.tailBytes, "chunk size \(size)", file: file, line: line)
            } else {
                first = (records, r)
            }
        }
        return first!
    }

    private let twoRecords = """
        [
          {
            "id": "a_0",
            "conversations": [
              {"from": "human", "value": "Hi"},
              {"from": "gpt", "value": "Hello! How can I help?", "markdown": null}
            ],
            "extra": [1, 2, {"x": "y"}]
          },
          {"id": "b_1", "conversations": [{"from": "system", "value": ""}]}
        ]

        """

    func testNormalArray() throws {
        let (records, r) = try readAll(write(twoRecords))
        XCTAssertEqual(
            records,
            [
                ShareGPTConversation(id: "a_0", conversations: [.init(from: "human", value: "Hi"), .init(from: "gpt", value: "Hello! How can I help?")]),
                ShareGPTConversation(id: "b_1", conversations: [.init(from: "system", value: "")]),
            ])
        XCTAssertFalse(r.truncatedTail)
        XCTAssertEqual(r.skippedRecords, 0)
        XCTAssertEqual(r.recordsRead, 2)
        XCTAssertEqual(r.tailBytes, 0)
    }

    func testStreamsOneRecordAtATime() throws {
        let r = try ShareGPTReader(path: write(twoRecords), chunkSize: 16)
        XCTAssertEqual(try r.next()?.id, "a_0")
        XCTAssertFalse(r.isFinished)
        XCTAssertEqual(r.recordsRead, 1)
        XCTAssertEqual(try r.next()?.id, "b_1")
        XCTAssertNil(try r.next())
        XCTAssertTrue(r.isFinished)
    }

    func testTruncatedMidRecord() throws {
        let full = Array(twoRecords.utf8)
        // Cut inside the second record: inside a string, after a backslash, between keys.
        let second = twoRecords.range(of: "{\"id\": \"b_1\"")!.lowerBound.utf16Offset(in: twoRecords)
        let extra = #"{"id": "c_2", "conversations": [{"from": "human", "value": "tail \" with } and ] and \\"#
        let withThird = String(twoRecords.dropLast(3)) + ",\n  " + extra  // drops "\n]\n"
        for cut in [second + 1, second + 10, full.count - 6] {
            let (records, r) = try readAll(write(Array(full[..<cut])))
            XCTAssertEqual(records.map(\.id), ["a_0"], "cut at \(cut)")
            XCTAssertTrue(r.truncatedTail)
            XCTAssertEqual(r.tailBytes, cut - second, "cut at \(cut)")
            XCTAssertEqual(r.skippedRecords, 0)
        }
        let (records, r) = try readAll(write(withThird))
        XCTAssertEqual(records.map(\.id), ["a_0", "b_1"])
        XCTAssertTrue(r.truncatedTail)
        XCTAssertEqual(r.tailBytes, extra.utf8.count)
        // Cut between records (after a comma), and right after the opening bracket.
        let (r2, reader2) = try readAll(write(String(twoRecords.prefix(second)) ))
        XCTAssertEqual(r2.map(\.id), ["a_0"])
        XCTAssertTrue(reader2.truncatedTail)
        XCTAssertEqual(reader2.tailBytes, 0)
        let (r3, reader3) = try readAll(write("[\n"))
        XCTAssertEqual(r3, [])
        XCTAssertTrue(reader3.truncatedTail)
    }

    func testEscapesAndBracesInsideStrings() throws {
        let tricky = #"a } ] { [ \" \\ \\\" \/ \n\t, \"}, {\"id\": \"fake\"} end \\"#
        let expected = "a } ] { [ \" \\ \\\" / \n\t, \"}, {\"id\": \"fake\"} end \\"
        let text = #"[{"id": "x\"}", "conversations": [{"from": "human", "value": ""# + tricky + #""}]}, {"id": "y", "conversations": []}]"#
        let (records, r) = try readAll(write(text))
        XCTAssertEqual(records, [
            ShareGPTConversation(id: "x\"}", conversations: [.init(from: "human", value: expected)]),
            ShareGPTConversation(id: "y", conversations: []),
        ])
        XCTAssertFalse(r.truncatedTail)
        XCTAssertEqual(r.skippedRecords, 0)
    }

    func testUnicode() throws {
        let text = #"[{"id": "ü", "conversations": [{"from": "gpt", "value": "héllo 你好 🎉 \u00e9 \ud83c\udf89 안녕"}]}]"#
        // A UTF-8 byte order mark in front is accepted.
        let (records, r) = try readAll(write([0xEF, 0xBB, 0xBF] + Array(text.utf8)))
        XCTAssertEqual(records, [ShareGPTConversation(id: "ü", conversations: [.init(from: "gpt", value: "héllo 你好 🎉 é 🎉 안녕")])])
        XCTAssertFalse(r.truncatedTail)
    }

    func testEmptyArray() throws {
        for text in ["[]", " [ ]\n", "[\n\n]"] {
            let (records, r) = try readAll(write(text))
            XCTAssertEqual(records, [])
            XCTAssertFalse(r.truncatedTail)
            XCTAssertEqual(r.skippedRecords, 0)
        }
    }

    func testMalformedRecordsAreSkippedAndCounted() throws {
        let text = """
            [42, "a string", {"id": "no conversations"}, {"id": 7, "conversations": []},
             {"id": "bad turn", "conversations": [{"from": "human"}]}, {"id": , "x"}, [1, 2], true, }, null,
             {"id": "ok", "conversations": [{"from": "human", "value": "v"}]}, , ,
             {"id": "ok2", "conversations": []}]
            """
        let (records, r) = try readAll(write(text))
        XCTAssertEqual(records.map(\.id), ["ok", "ok2"])
        XCTAssertEqual(r.skippedRecords, 10)
        XCTAssertFalse(r.truncatedTail)
    }

    func testEmptyFileAndNonArray() throws {
        let (records, r) = try readAll(write(""))
        XCTAssertEqual(records, [])
        XCTAssertTrue(r.truncatedTail)
        let reader = try ShareGPTReader(path: write(#"{"id": "x", "conversations": []}"#))
        XCTAssertThrowsError(try reader.next()) { XCTAssertEqual($0 as? ShareGPTReaderError, .notAnArray(path: reader.path, found: UInt8(ascii: "{"))) }
        XCTAssertNil(try reader.next())
        XCTAssertThrowsError(try ShareGPTReader(path: "/nonexistent/sharegpt.json"))
    }
}
