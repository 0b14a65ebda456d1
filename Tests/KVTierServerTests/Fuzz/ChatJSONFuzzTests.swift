import Foundation
import XCTest

@testable import KVTierServer

/// Fuzz target `chat-json`: mutated chat completion bodies through `ValidatedChatRequest`, the
/// daemon's own decoding and validation. Every input is either accepted, with values inside the
/// limits, or rejected with a 400 `invalid_request_error` whose message is non-empty.
final class ChatJSONFuzzTests: XCTestCase {
    static let corpus: [[UInt8]] = [
        HTTPRequestFuzzTests.chat, HTTPRequestFuzzTests.streamed,
        #"{"messages":[{"role":"user","content":"Hi"}]}"#,
        #"{"messages":[{"role":"system","content":""},{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"\u00e9\ud83d\ude00\n\t\"\\"}],"max_tokens":4096,"temperature":2,"top_p":0.01,"seed":18446744073709551615,"stop":["a","b","c","d"]}"#,
        #"{"messages":[{"role":"user","content":"x"}],"max_tokens":1,"temperature":0,"stream":false,"stop":[],"session_id":"s-0123"}"#,
        #"  {"session_id":"é","messages":[{"content":"x","role":"user","extra":[1,{}]}],"unknown":{"a":[null]}}  "#,
    ].map { Array($0.utf8) }

    static let dictionary = [
        "\"messages\"", "\"role\"", "\"content\"", "\"user\"", "\"system\"", "\"assistant\"", "\"tool\"", "\"stream\"", "\"max_tokens\"",
        "\"stop\"", "\"session_id\"", "\"seed\"", "\"temperature\"", "\"top_p\"", "\"model\"", "[", "]", "{", "}", ",", ":", "\"", "\\u0000",
        "\\ud800", "\\", "null", "true", "-", "e", "1e400", "\u{FEFF}",
    ]

    func testChatJSONFuzz() {
        let mutator = ByteMutator(corpus: Self.corpus, formats: [.json], dictionary: Self.dictionary)
        let limits = HTTPRequestFuzzTests.limits
        FuzzRunner(target: "chat-json", quickInputs: 30_000).run(generate: { mutator.generate(&$0) }) { input, rng in
            let header: String? = rng.oneIn(8) ? String(decoding: rng.pick(Self.corpus).prefix(rng.below(300)), as: UTF8.self) : nil
            return try Self.check(input, sessionHeader: header, limits: limits)
        }
    }

    /// Found as input #307841 of seed 0x1234 (1,000,000-input run): a body that ends right after
    /// its 513th nested `[` crashed the process (SIGILL inside Foundation's JSON scanner, which
    /// should report its 512-level limit). Bodies nesting deeper than `RequestJSON.maxDepth`
    /// are now refused before decoding.
    func testBodyEndingAtNestingDepth513_isRejectedNotCrashing() throws {
        let found = #"  {"session_id":"é","messages":[{"content":"x","role":"user","extra":["# + String(repeating: "[", count: 509)
        for body in [found, String(repeating: "[", count: 513), #"{"messages":"# + String(repeating: "[", count: 512)] {
            XCTAssertThrowsError(try ValidatedChatRequest(body: Array(body.utf8), sessionHeader: nil, limits: ServerLimits())) { error in
                XCTAssertTrue("\((error as? APIError)?.error.message ?? "")".contains("nest more than 64 levels"), "\(error)")
            }
        }
    }

    func testNestingDepth_countsOutsideStringsOnly() {
        XCTAssertEqual(RequestJSON.nestingDepth(Array(#"{"a":[1,{"b":"[[[{"]"}],[]]}"#.utf8), stopAfter: 64), 3)
        let at64 = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        XCTAssertNoThrow(try RequestJSON.decode([[[Int]]].self, from: Array("[[[1]]]".utf8)))
        XCTAssertEqual(RequestJSON.nestingDepth(Array(at64.utf8), stopAfter: 64), 64)
        XCTAssertThrowsError(try RequestJSON.decode([Int].self, from: Array(("[" + at64 + "]").utf8))) { XCTAssertTrue($0 is RequestJSON.TooDeep) }
    }

    /// The invariants for one body; the outcome label is "ok" or the error with digits and quoted
    /// parts masked (so that "got 5" and "got 6" count as one kind of answer).
    static func check(_ body: [UInt8], sessionHeader: String?, limits: ServerLimits) throws -> String {
        do {
            let valid = try ValidatedChatRequest(body: body, sessionHeader: sessionHeader, limits: limits)
            guard !valid.messages.isEmpty, valid.messages.count <= limits.maxMessages, valid.messages.last?.role == "user",
                (1...limits.maxTokens).contains(valid.maxTokens), valid.stopSequences.count <= 4
            else { throw FuzzRunner.Violation("accepted a request outside the limits") }
            if let s = valid.sessionID, s.isEmpty || s.utf8.count > 256 { throw FuzzRunner.Violation("accepted a session id of \(s.utf8.count) bytes: \(s.prefix(40).debugDescription)") }
            return "ok"
        } catch let e as APIError {
            guard e.status == 400, e.error.type == "invalid_request_error", !e.error.message.isEmpty else {
                throw FuzzRunner.Violation("rejected with \(e.status) \(e.error.type) \(e.error.message.debugDescription)")
            }
            return mask(e.error.message)
        }
    }

    static func mask(_ message: String) -> String {
        var out = ""
        var quoted = false
        for c in message.prefix(120) {
            if c == "'" { quoted.toggle(); out.append(c) } else if quoted { continue } else { out.append(c.isNumber ? "#" : c) }
        }
        return out
    }
}
