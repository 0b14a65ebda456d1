import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Overload: 64 clients chat as fast as they can (short streamed turns on the real model) for
/// 20 s (quick) or 5 minutes (`KVTIER_RELIABILITY=full`) against a queue of 16. Past the queue
/// limit clients get 429 with Retry-After and try again 0.1-0.4 s later (sooner than Retry-After
/// asks, to keep the pressure on). Checks: nothing but 200 and 429 comes back, every 429 carries
/// Retry-After, turns keep completing (no 15 s without one: no deadlock), the queue stays within
/// its limit; reports TTFT as the clients see it (queueing included) and the daemon's memory.
final class OverloadTests: XCTestCase {
    func testSixtyFourClientsAgainstABoundedQueue() throws {
        let clients = 64
        let maxQueue = 16
        let seconds = ReliabilityScale.pick(quick: 20.0, full: 300.0)
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(
            socket: socket, state: dir + "/state",
            config: "[server]\nmax_queue = \(maxQueue)\n[store]\nhbm_bytes = \"128MiB\"\ndram_bytes = \"256MiB\"\n")
        defer { stop(daemon) }
        let pid = daemon.processIdentifier
        XCTAssertEqual(try chat(socket, [("user", "Warm up.")], session: "warm", maxTokens: 4).status, 200)
        let start = processMemoryKiB(pid)

        let load = OverloadClients(socket: socket, seconds: seconds)
        let group = DispatchGroup()
        for i in 0..<clients {
            group.enter()
            Thread { load.run(client: i); group.leave() }.start()
        }
        // Sample the queue depth and memory while the clients run.
        var maxDepth = 0
        var rssSamples: [Int] = []
        let began = Date()
        while Date().timeIntervalSince(began) < seconds {
            if let health = try? request(socket, "GET", "/healthz") {
                maxDepth = max(maxDepth, health.json["queue_depth"] as? Int ?? 0)
            }
            rssSamples.append(processMemoryKiB(pid).rss)
            usleep(500_000)
        }
        group.wait()
        let end = processMemoryKiB(pid)
        let r = load.results()

        let ttft = r.firstTextSeconds.sorted()
        func percentile(_ p: Double) -> Double { ttft.isEmpty ? 0 : ttft[min(ttft.count - 1, Int(Double(ttft.count) * p))] }
        // Progress: the longest time without a completed turn (from the start, between turns,
        // and up to the end of the run). A deadlock makes it the whole run.
        let times = r.completionTimes.sorted()
        let longestGap = zip([0] + times, times + [max(seconds, times.last ?? seconds)]).map { $1 - $0 }.max() ?? seconds
        // Memory after warm-up: the middle of the run against its end.
        let midRSS = rssSamples.isEmpty ? 0 : rssSamples[rssSamples.count / 2]
        ReliabilityScale.report("overload", [
            "clients": clients, "seconds": seconds, "max_queue": maxQueue, "turns_completed": r.completed,
            "responses_429": r.rejected, "responses_429_without_retry_after": r.rejectedWithoutRetryAfter,
            "other_failures": r.otherFailures, "ttft_p50_s": percentile(0.5), "ttft_p99_s": percentile(0.99),
            "max_queue_depth_seen": maxDepth, "longest_seconds_without_a_completed_turn": longestGap,
            "turns_per_second": Double(r.completed) / seconds,
            "rss_kib_start": start.rss, "rss_kib_middle": midRSS, "rss_kib_end": end.rss, "rss_kib_peak": end.peak,
        ])
        XCTAssertTrue(daemon.isRunning)
        XCTAssertEqual(r.otherFailures, 0, "only 200 and 429: \(r.otherDetails.prefix(5))")
        XCTAssertGreaterThan(r.rejected, 0, "64 clients overflow a queue of 16")
        XCTAssertEqual(r.rejectedWithoutRetryAfter, 0)
        XCTAssertLessThan(longestGap, 15, "turns keep completing (no deadlock)")
        XCTAssertLessThanOrEqual(maxDepth, maxQueue + 1, "the queue stays bounded")
        XCTAssertEqual(try request(socket, "GET", "/healthz").status, 200)
    }
}

/// The load generator's shared tallies (guarded by `lock`).
final class OverloadClients: @unchecked Sendable {
    struct Results {
        var completed = 0
        var rejected = 0
        var rejectedWithoutRetryAfter = 0
        var otherFailures = 0
        var otherDetails: [String] = []
        var firstTextSeconds: [Double] = []
        /// Seconds since the start at which turns completed.
        var completionTimes: [Double] = []
    }

    let socket: String
    let seconds: Double
    let started = Date()
    private let lock = NSLock()
    private var tallies = Results()

    init(socket: String, seconds: Double) {
        self.socket = socket
        self.seconds = seconds
    }

    func results() -> Results { lock.withLock { tallies } }

    func run(client: Int) {
        var turn = 0
        while Date().timeIntervalSince(started) < seconds {
            turn += 1
            let t = streamChat(socket, messages: [("user", "Client \(client) says hello \(turn % 3).")], session: "load-\(client)", maxTokens: 4)
            let now = Date().timeIntervalSince(started)
            lock.withLock {
                if t.status == 200 && t.completed {
                    tallies.completed += 1
                    tallies.completionTimes.append(now)
                    if let f = t.firstTextSeconds { tallies.firstTextSeconds.append(f) }
                } else if t.status == 429 {
                    tallies.rejected += 1
                    if t.retryAfter == nil { tallies.rejectedWithoutRetryAfter += 1 }
                } else {
                    tallies.otherFailures += 1
                    tallies.otherDetails.append("status \(t.status) \(t.error ?? "") at \(now) s")
                }
            }
            if t.status == 429 { usleep(UInt32.random(in: 100_000...400_000)) }
        }
    }
}
