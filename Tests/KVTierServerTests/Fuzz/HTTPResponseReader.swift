import Foundation
import NIOHTTP1

/// Reads the bytes a connection wrote back as a sequence of HTTP/1.1 responses and checks each
/// one: a status line, headers, a body framed by Content-Length or chunked encoding, and for a
/// 4xx or 5xx an OpenAI-style JSON error (`error.message` non-empty, `error.type` present).
///
/// Like a client, it pairs responses with the requests' methods in order: a response to HEAD has
/// no body (whatever its Content-Length says), one to CONNECT has neither body nor framing
/// headers. The raw 408 written below the HTTP encoder answers no decoded request.
struct HTTPResponseReader {
    struct Response {
        let status: Int
        /// Header names lower-cased.
        let headers: [(String, String)]
        let body: [UInt8]
        var closes: Bool { headers.contains { $0.0 == "connection" && $0.1.lowercased() == "close" } }
    }

    private let bytes: [UInt8]
    private var offset = 0
    private var methods: ArraySlice<HTTPMethod>

    init(_ bytes: [UInt8], requestMethods: [HTTPMethod]) {
        self.bytes = bytes
        self.methods = requestMethods[...]
    }

    /// Every response in the bytes; throws `FuzzRunner.Violation` at the first malformed one.
    static func responses(in bytes: [UInt8], requestMethods: [HTTPMethod]) throws -> [Response] {
        var reader = HTTPResponseReader(bytes, requestMethods: requestMethods)
        var out: [Response] = []
        while reader.offset < bytes.count { out.append(try reader.next()) }
        return out
    }

    private func fail(_ what: String) -> FuzzRunner.Violation {
        FuzzRunner.Violation("malformed response at byte \(offset) of \(bytes.count): \(what); output: \(String(decoding: bytes.prefix(600), as: UTF8.self).debugDescription)")
    }

    private mutating func line() throws -> String {
        var i = offset
        while i + 1 < bytes.count, !(bytes[i] == 0x0D && bytes[i + 1] == 0x0A) { i += 1 }
        guard i + 1 < bytes.count else { throw fail("unterminated line") }
        let text = String(decoding: bytes[offset..<i], as: UTF8.self)
        offset = i + 2
        return text
    }

    private mutating func take(_ n: Int) throws -> [UInt8] {
        guard n >= 0, offset + n <= bytes.count else { throw fail("body shorter than its framing says (\(n) bytes)") }
        defer { offset += n }
        return Array(bytes[offset..<(offset + n)])
    }

    private mutating func next() throws -> Response {
        let statusLine = try line()
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0] == "HTTP/1.1", let status = Int(parts[1]), (100...599).contains(status) else {
            throw fail("bad status line \(statusLine.debugDescription)")
        }
        var headers: [(String, String)] = []
        while true {
            let l = try line()
            if l.isEmpty { break }
            guard let colon = l.firstIndex(of: ":") else { throw fail("header line without a colon \(l.debugDescription)") }
            headers.append((l[..<colon].lowercased(), l[l.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        let lengths = headers.filter { $0.0 == "content-length" }
        let chunked = headers.contains { $0.0 == "transfer-encoding" && $0.1.lowercased() == "chunked" }
        let method = status == 408 ? nil : methods.popFirst()
        var body: [UInt8] = []
        if method == .CONNECT {
            guard lengths.isEmpty, !chunked else { throw fail("framing headers on a response to CONNECT") }
        } else if method == .HEAD {
            guard !chunked || lengths.isEmpty else { throw fail("both Content-Length and chunked") }
        } else if chunked {
            guard lengths.isEmpty else { throw fail("both Content-Length and chunked") }
            while true {
                guard let size = Int(try line(), radix: 16), size >= 0 else { throw fail("bad chunk size") }
                if size == 0 {
                    guard try line().isEmpty else { throw fail("trailer after the last chunk") }
                    break
                }
                body += try take(size)
                guard try line().isEmpty else { throw fail("chunk not followed by CRLF") }
            }
        } else {
            guard lengths.count == 1, let n = Int(lengths[0].1) else { throw fail("no single Content-Length") }
            body = try take(n)
        }
        if status >= 400, method != .HEAD, method != .CONNECT {
            guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
                let error = object["error"] as? [String: Any], let message = error["message"] as? String, !message.isEmpty,
                error["type"] is String
            else { throw fail("\(status) without an OpenAI-style JSON error body") }
        }
        return Response(status: status, headers: headers, body: body)
    }
}
