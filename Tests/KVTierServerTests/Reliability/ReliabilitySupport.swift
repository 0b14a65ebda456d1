import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// How hard the reliability tests push. `make test` runs the quick variant; `make reliability`
/// sets `KVTIER_RELIABILITY=full` for the issue's figures (50+ kills, 1,000 connections held
/// longer, 5 minutes of overload). `KVTIER_RELIABILITY_OUT` names a directory where each test
/// writes its figures as JSON (the reliability report collects them).
enum ReliabilityScale {
    static var isFull: Bool { ProcessInfo.processInfo.environment["KVTIER_RELIABILITY"] == "full" }

    static func pick(quick: Int, full: Int) -> Int { isFull ? full : quick }
    static func pick(quick: Double, full: Double) -> Double { isFull ? full : quick }

    /// Prints one greppable line and, with `KVTIER_RELIABILITY_OUT`, writes `<name>.json`.
    static func report(_ name: String, _ figures: [String: Any]) {
        let line = figures.keys.sorted().map { "\($0)=\(figures[$0].map { "\($0)" } ?? "")" }.joined(separator: " ")
        print("reliability \(name): \(line)")
        guard let out = ProcessInfo.processInfo.environment["KVTIER_RELIABILITY_OUT"], !out.isEmpty else { return }
        try? FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        var all = figures
        all["test"] = name
        all["variant"] = isFull ? "full" : "quick"
        all["date"] = ISO8601DateFormatter().string(from: Date())
        if let data = try? JSONSerialization.data(withJSONObject: all, options: [.prettyPrinted, .sortedKeys]) {
            try? data.write(to: URL(fileURLWithPath: out + "/" + name + ".json"))
        }
    }
}

/// Resident and peak resident memory of a process, in KiB, from /proc.
func processMemoryKiB(_ pid: Int32) -> (rss: Int, peak: Int) {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return (0, 0) }
    func field(_ name: String) -> Int {
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return 0 }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }
    return (field("VmRSS"), field("VmHWM"))
}

/// The outcome of one streamed chat turn, as the client saw it.
struct StreamedTurn {
    /// The stream ended with `data: [DONE]` after a final chunk with a finish reason.
    var completed = false
    var status = 0
    /// The Retry-After header, when there was one.
    var retryAfter: Int?
    /// Seconds from sending the request to the first piece of text.
    var firstTextSeconds: Double?
    var content = ""
    var finishReason: String?
    var promptTokens = 0
    var completionTokens = 0
    var report: [String: Any] = [:]
    /// The session the turn ran in (the final chunk's `session_id`).
    var sessionID: String?
    var error: String?
}

/// Sends a streaming chat completion on a new connection and reads the server-sent events as
/// they arrive; `onEvent` is told when the first content chunk arrives. Returns what arrived
/// before the server finished or the connection broke.
func streamChat(_ socketPath: String, messages: [(String, String)], session: String?, maxTokens: Int,
                onFirstChunk: () -> Void = {}) -> StreamedTurn {
    var turn = StreamedTurn()
    var body: [String: Any] = [
        "messages": messages.map { ["role": $0.0, "content": $0.1] }, "max_tokens": maxTokens, "temperature": 0,
        "stream": true,
    ]
    if let session { body["session_id"] = session }
    guard let payload = try? JSONSerialization.data(withJSONObject: body) else { return turn }
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: kvtier\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: \(payload.count)\r\n\r\n"
    let fd: Int32
    do { fd = try connectUnix(socketPath) } catch {
        turn.error = "connect: \(error)"
        return turn
    }
    defer { close(fd) }
    let bytes = Array(head.utf8) + Array(payload)
    let sentAt = Date()
    let sent = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    guard sent == bytes.count else {
        turn.error = "short write"
        return turn
    }
    var buffer: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16384)
    var sawHead = false
    var sawFirst = false
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        buffer += chunk[0..<n]
        if !sawHead, let end = findSubsequence(buffer, Array("\r\n\r\n".utf8)) {
            let headText = String(decoding: buffer[..<end], as: UTF8.self)
            turn.status = Int(headText.split(separator: " ").dropFirst().first ?? "") ?? 0
            for line in headText.split(separator: "\r\n") where line.lowercased().hasPrefix("retry-after:") {
                turn.retryAfter = Int(line.split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "")
            }
            buffer.removeFirst(end + 4)
            sawHead = true
        }
        guard sawHead else { continue }
        // Events are "data: {...}\n\n"; chunk-size lines of the chunked encoding are skipped.
        while let end = findSubsequence(buffer, Array("\n\n".utf8)) {
            let eventText = String(decoding: buffer[..<end], as: UTF8.self)
            buffer.removeFirst(end + 2)
            for line in eventText.split(separator: "\n") {
                guard let start = line.range(of: "data: ") else { continue }
                let data = line[start.upperBound...].trimmingCharacters(in: .whitespacesAndNewlines)
                if data == "[DONE]" {
                    turn.completed = turn.finishReason != nil
                    continue
                }
                guard let object = (try? JSONSerialization.jsonObject(with: Data(data.utf8))) as? [String: Any] else { continue }
                if let error = object["error"] as? [String: Any] {
                    turn.error = error["message"] as? String ?? "error"
                }
                guard let choice = (object["choices"] as? [[String: Any]])?.first else { continue }
                if let piece = (choice["delta"] as? [String: Any])?["content"] as? String {
                    if !sawFirst {
                        sawFirst = true
                        turn.firstTextSeconds = Date().timeIntervalSince(sentAt)
                        onFirstChunk()
                    }
                    turn.content += piece
                }
                if let finish = choice["finish_reason"] as? String {
                    turn.finishReason = finish
                    let usage = object["usage"] as? [String: Any] ?? [:]
                    turn.promptTokens = usage["prompt_tokens"] as? Int ?? 0
                    turn.completionTokens = usage["completion_tokens"] as? Int ?? 0
                    turn.report = object["kvtier"] as? [String: Any] ?? [:]
                    turn.sessionID = object["session_id"] as? String
                }
            }
        }
    }
    return turn
}

func findSubsequence(_ haystack: [UInt8], _ needle: [UInt8]) -> Int? {
    guard haystack.count >= needle.count, !needle.isEmpty else { return nil }
    var i = 0
    while i + needle.count <= haystack.count {
        if haystack[i] == needle[0] && Array(haystack[i..<(i + needle.count)]) == needle { return i }
        i += 1
    }
    return nil
}

/// The reply text of a non-streamed chat completion.
func replyText(_ json: [String: Any]) -> String? {
    ((json["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String
}

/// A value of a Prometheus text exposition, summed over its label sets.
func metricValue(_ text: String, _ name: String, labels: String? = nil) -> Double {
    var total = 0.0
    for line in text.split(separator: "\n") where line.hasPrefix(name) && !line.hasPrefix("#") {
        let rest = line.dropFirst(name.count)
        guard rest.first == " " || rest.first == "{" else { continue }
        if let labels, !rest.contains(labels) { continue }
        total += Double(rest.split(separator: " ").last ?? "") ?? 0
    }
    return total
}
