import Foundation
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

/// A client that pipelines requests and never reads the answers: kvtierd stops reading from that
/// connection once its unsent answers pass the high-water mark, so its memory stays flat, and
/// others are served meanwhile. (Before `WritabilityGate` this grew kvtierd by gigabytes.)
final class PipeliningTests: XCTestCase {
    func testPipeliningWithoutReadingKeepsMemoryFlat() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state")
        defer { stop(daemon) }
        let pid = daemon.processIdentifier
        let metrics = try rawRequest(socket, "GET", "/metrics")
        XCTAssertEqual(metrics.0, 200)
        let before = processMemoryKiB(pid).rss

        // Up to 2 MB of requests (about 60,000 of them, 300 MB of answers if all were made) for
        // at most 8 s; a send blocks (2 s at a time) once the server stops taking them.
        let fd = try connectUnix(socket)
        defer { close(fd) }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let one = Array("GET /metrics HTTP/1.1\r\nHost: k\r\n\r\n".utf8)
        let chunk = [UInt8]((0..<(65536 / one.count)).flatMap { _ in one })
        var sent = 0
        let deadline = Date().addingTimeInterval(8)
        while sent < 2 << 20 && Date() < deadline {
            let n = chunk.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { sent += n } else if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR { break }
        }
        Thread.sleep(forTimeInterval: 2)  // whatever the server took, it has answered by now
        let after = processMemoryKiB(pid).rss
        let health = try request(socket, "GET", "/healthz")
        XCTAssertEqual(health.status, 200, "another client is served meanwhile")
        let grew = after - before
        print(
            "pipelined \(sent / one.count) requests (\(sent) bytes) without reading; kvtierd RSS \(before) -> \(after) KiB (+\(grew))"
        )
        XCTAssertLessThan(sent, 2 << 20, "the server stopped reading before the client sent everything")
        XCTAssertLessThan(grew, 64 << 10, "kvtierd grew by \(grew) KiB for one client's unread answers")

        // The answers are all there, in order, when the client reads.
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        XCTAssertTrue(String(decoding: buf.prefix(max(n, 0)), as: UTF8.self).hasPrefix("HTTP/1.1 200"))
        XCTAssertTrue(daemon.isRunning)
    }
}
