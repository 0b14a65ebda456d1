import Foundation
import KVTierModel
import NIOCore
import NIOEmbedded
import NIOHTTP1
import XCTest

@testable import KVTierServer

/// Fuzz target `http-request`: raw bytes, in fragments of random sizes, through the daemon's own
/// connection pipeline (`HTTPServer.installConnectionPipeline`: timeouts, NIO's HTTP/1.1 codec,
/// `ProtocolErrorResponder`, `HTTPHandler`) on an `EmbeddedChannel`, with `StubAPIService`
/// behind it. Per input: no crash, no hang, everything written back parses as HTTP/1.1
/// responses with a JSON error body for every 4xx and 5xx, nothing follows a response that
/// closes the connection (and the connection does close), and the bytes written back stay
/// bounded by the input.
final class HTTPRequestFuzzTests: XCTestCase {
    static let chat = #"{"model":"smollm2","messages":[{"role":"system","content":"You are brief."},{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"temperature":0,"top_p":0.9,"seed":7,"stop":["\n\n","END"],"session_id":"c1"}"#
    static let streamed = #"{"messages":[{"role":"user","content":"Hi"}],"stream":true,"stop":"x","max_tokens":4}"#

    static func request(_ method: String, _ path: String, body: String? = nil, headers: [String] = []) -> [UInt8] {
        var text = "\(method) \(path) HTTP/1.1\r\nHost: kvtier\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
        for h in headers { text += h + "\r\n" }
        if let body { text += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body } else { text += "\r\n" }
        return Array(text.utf8)
    }

    /// Every endpoint of docs/protocol.md, valid, plus a few pipelined pairs.
    static var corpus: [[UInt8]] {
        var c: [[UInt8]] = [
            request("POST", "/v1/chat/completions", body: chat),
            request("POST", "/v1/chat/completions", body: streamed),
            request("POST", "/v1/chat/completions", body: #"{"messages":[{"role":"user","content":"Hi"}]}"#, headers: ["X-Session-Id: s-1"]),
            request("GET", "/v1/models"),
            request("GET", "/healthz"),
            request("GET", "/metrics"),
            request("GET", "/v1/tiers"),
            request("GET", "/v1/sessions"),
            request("GET", "/v1/sessions/c1"),
            request("DELETE", "/v1/sessions/c%31"),
            request("POST", "/v1/sessions/c1/demote", body: #"{"to":"disk"}"#),
            request("POST", "/v1/hints", body: #"{"upcoming":["s1","s2"]}"#),
            request("POST", "/v1/flush", body: ""),
            Array("GET /healthz HTTP/1.0\r\n\r\n".utf8),
            Array("GET /healthz?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n".utf8),
            Array("POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n19\r\n{\"messages\":[{\"role\":\"use\r\n17\r\nr\",\"content\":\"Hi\"}]}   \r\n0\r\n\r\n".utf8),
        ]
        c.append(c[4] + c[0])
        c.append(c[3] + c[1] + c[4])
        return c
    }

    static let dictionary = [
        "GET ", "POST ", "DELETE ", "PUT ", "HEAD ", "OPTIONS ", "CONNECT ", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", " HTTP/1.1\r\n", " HTTP/1.0\r\n",
        " HTTP/0.9\r\n", " HTTP/2\r\n", "\r\n", "\r\n\r\n", "\n", "Content-Length: ", "Transfer-Encoding: chunked\r\n", "Connection: close\r\n",
        "Connection: keep-alive\r\n", "Expect: 100-continue\r\n", "Upgrade: websocket\r\n", "X-Session-Id: ", "/v1/chat/completions",
        "/v1/sessions/", "/demote", "%", "%00", "%zz", "?", "#", "http://kvtier/healthz", "*", "\"messages\"", "\"role\"", "\"content\"",
        "\"stream\":true", "\"max_tokens\"", "\"stop\"", "\"session_id\"", "\"seed\"", "\"temperature\"", "\"top_p\"",
    ]

    /// Small limits, so that the 413 path is reached by inputs of fuzz size.
    static var limits: ServerLimits {
        var l = ServerLimits()
        l.maxBodyBytes = 16 * 1024
        l.maxMessages = 64
        return l
    }

    func testHTTPRequestFuzz() throws {
        var mutator = ByteMutator(corpus: Self.corpus, formats: [.http, .json], dictionary: Self.dictionary)
        mutator.maxLength = 128 * 1024
        let service = StubAPIService(limits: Self.limits)
        FuzzRunner(target: "http-request", quickInputs: 10_000).run(generate: { mutator.generate(&$0) }) { input, rng in
            try Self.exercise(input, service: service, rng: &rng)
        }
    }

    /// The corpus as it is: each valid request is answered 200 (found by the fuzz run's checks
    /// too, but here each is named, so a regression in one endpoint is plain).
    func testCorpusRequestsAreAnswered200() throws {
        let service = StubAPIService(limits: Self.limits)
        for (i, request) in Self.corpus.enumerated() {
            var rng = SplitMix64(seed: 1)
            let outcome = try Self.exercise(request, service: service, rng: &rng, fragments: .whole)
            let expected = [8: "404", 9: "404", 10: "404"][i] ?? "200"
            XCTAssert(outcome.hasPrefix(expected), "corpus entry \(i): \(outcome)")
        }
    }

    enum Fragments: Equatable { case whole, random, fixed(Int) }

    /// Feeds `input` through a fresh connection pipeline and checks the invariants; returns the
    /// statuses written back (and whether the connection closed) as the outcome label.
    static func exercise(
        _ input: [UInt8], service: StubAPIService, rng: inout SplitMix64, fragments: Fragments = .random
    ) throws -> String {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(SocketWriteSemantics())
        try HTTPServer.installConnectionPipeline(channel.pipeline.syncOperations, service: service, peer: .tcp)
        let recorder = RequestMethodRecorder()
        let decoder = try channel.pipeline.syncOperations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
        try channel.pipeline.syncOperations.addHandler(recorder, position: .after(decoder))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 8080)).wait()
        var out: [UInt8] = []
        let bound = 65_536 + 3 * input.count
        func drain() throws {
            channel.embeddedEventLoop.run()
            while let part = try channel.readOutbound(as: IOData.self) {
                guard case .byteBuffer(var buffer) = part else { throw FuzzRunner.Violation("a file region written back") }
                out += buffer.readBytes(length: buffer.readableBytes) ?? []
            }
            guard out.count <= bound else { throw FuzzRunner.Violation("\(out.count) bytes written back for a \(input.count)-byte input") }
        }
        // Fragment sizes, picked per input: whole (half the inputs), fragments of up to 4 KiB, or
        // the first 512 bytes (the head, mostly) in fragments of 1 byte or of 1 to 16 bytes and
        // the rest whole. Fine fragments cost about 20 µs each in a debug build.
        var mode = 0
        switch fragments {
        case .whole: mode = 0
        case .random: mode = [0, 0, 0, 0, 1, 2, 3, 3][rng.below(8)]
        case .fixed: mode = 4
        }
        var offset = 0
        while offset < input.count, channel.isActive {
            let n: Int
            switch mode {
            case 0: n = input.count
            case 1: n = offset < 512 ? 1 : input.count
            case 2: n = offset < 512 ? 1 + rng.below(16) : input.count
            case 3: n = rng.size(upTo: 4096)
            default: if case .fixed(let size) = fragments { n = size } else { n = input.count }
            }
            let end = min(input.count, offset + n)
            var buffer = channel.allocator.buffer(capacity: end - offset)
            buffer.writeBytes(input[offset..<end])
            // Errors that reach the pipeline's end are the handler's to close on; they are not ours.
            _ = try? channel.writeInbound(buffer)
            try drain()
            offset = end
        }
        // Sometimes let the clock run past the request and idle deadlines.
        if fragments == .random, rng.oneIn(8) {
            channel.embeddedEventLoop.advanceTime(by: .seconds(rng.oneIn(2) ? 31 : 61))
            try drain()
        }
        let closedByServer = !channel.isActive
        let responses = try HTTPResponseReader.responses(in: out, requestMethods: recorder.methods)
        if let i = responses.firstIndex(where: \.closes) {
            guard i == responses.count - 1 else { throw FuzzRunner.Violation("\(responses.count - 1 - i) responses after one that closes the connection: \(String(decoding: out.prefix(1500), as: UTF8.self).debugDescription)") }
            guard closedByServer else { throw FuzzRunner.Violation("a response said Connection: close but the connection stayed open") }
        }
        // The client goes away (EOF); nothing may be written after.
        _ = try? channel.finish(acceptAlreadyClosed: true)
        return responses.map { String($0.status) }.joined(separator: ",") + (closedByServer ? " closed" : "")
    }
}
