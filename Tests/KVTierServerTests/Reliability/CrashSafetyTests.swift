import Foundation
import KVTierModel
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Crash safety: the real kvtierd, 16 concurrent streamed multi-turn chats, `kill -9` at random
/// moments (some at a random time, some a few milliseconds after a turn was acknowledged, while
/// its KV is being saved and written back), then a restart and a check of every chat:
/// - its session record holds every acknowledged turn (the promise of docs/operations.md: a turn
///   whose reply was delivered survives a process kill);
/// - its next turn, served from whatever KV survived, gives the same greedy reply as a second
///   daemon that recomputes the whole history from nothing;
/// - no block read back fails its checksum.
///
/// Every chat starts with the same system message, longer than a block, and half the chats send
/// no session id (as stock OpenAI clients do): their sessions are forks that share the first
/// chat's blocks, so kills also land while shared blocks are referenced, released and removed,
/// and the check proves that no block a session references was deleted and none was rewritten.
///
/// The tiers are small (HBM 64 MiB, DRAM 48 MiB of F32 KV, blocks of 64 tokens), so sessions are
/// demoted and written back to disk all the time and kills land in the middle of that. F32 KV
/// makes reuse bit-exact with recomputation, so any difference is a wrong block, not rounding.
///
/// Quick: 3 kills. `KVTIER_RELIABILITY=full`: 50 kills. `KVTIER_CRASH_SEED` repeats a run.
final class CrashSafetyTests: XCTestCase {
    static let prompts = [
        "Name a fruit that is red.", "Why is the sky blue?", "Give me a word that rhymes with cat.",
        "What is two plus three?", "Describe the sea in one sentence.", "Which planet is closest to the sun?",
        "Say something kind.", "What colour is grass?", "Name a musical instrument.", "How many legs does a spider have?",
        "What do bees make?", "Tell me a short fact about the moon.", "What is the opposite of hot?",
    ]

    /// Longer than a block (64 tokens), so every chat's first block is shared.
    static let system =
        "You are a patient assistant in a crash-safety drill. Answer every question in one short sentence, "
        + "plainly, without lists, headings or code. If you do not know an answer, say so and stop. Keep to the "
        + "facts a child would learn at school, and never mention this drill."

    static let config = """
        [store]
        hbm_bytes = "64MiB"
        dram_bytes = "48MiB"
        block_tokens = 64
        kv_precision = "f32"
        """

    func testKill9DuringConcurrentChatsLosesNoAcknowledgedTurnAndServesNoWrongKV() throws {
        let kills = ReliabilityScale.pick(quick: 3, full: 50)
        let chatCount = 16
        let maxTurns = 5
        let seed = UInt64(ProcessInfo.processInfo.environment["KVTIER_CRASH_SEED"] ?? "") ?? 0x6B76_7469_6572
        var rng = SplitMix64(seed: seed)

        let dir = try temporaryDirectory(self)
        try FileManager.default.createDirectory(atPath: dir + "/ref", withIntermediateDirectories: true)
        let socket = dir + "/k.sock", state = dir + "/state"
        let refSocket = dir + "/ref/r.sock"
        let reference = try startDaemon(socket: refSocket, state: dir + "/ref/state", config: Self.config)
        defer { stop(reference) }

        let chats = CrashChats(count: chatCount, maxTurns: maxTurns)
        var figures = CrashFigures()
        var daemon: Process?
        defer { if let daemon { stop(daemon) } }

        for cycle in 0...kills {
            let started = Date()
            let d = try startDaemon(socket: socket, state: state, config: Self.config, log: dir + "/kvtierd-\(cycle).log")
            daemon = d
            if cycle > 0 { figures.restartSeconds.append(Date().timeIntervalSince(started)) }
            if cycle > 0 { try verifyEveryChat(chats, socket: socket, refSocket: refSocket, cycle: cycle, figures: &figures) }
            guard cycle < kills else { break }

            // Drive the chats, then kill at a random moment.
            let group = DispatchGroup()
            for i in 0..<chatCount {
                group.enter()
                let thread = Thread { chats.drive(i, socket: socket); group.leave() }
                thread.start()
            }
            let acksBefore = chats.acks
            let writtenAtStart = diskBytesWritten(socket)
            if cycle % 2 == 0 {
                usleep(UInt32(Double.random(in: 0.5...4.0, using: &rng) * 1e6))
            } else {
                // A few milliseconds after an acknowledgement: the turn's KV is being saved.
                let target = acksBefore + Int.random(in: 1...4, using: &rng)
                let deadline = Date().addingTimeInterval(30)
                while chats.acks < target && Date() < deadline { usleep(2_000) }
                usleep(UInt32.random(in: 0...40_000, using: &rng))
            }
            // What the disk tier did while the chats ran (its write counter, scraped again now).
            let writtenNow = diskBytesWritten(socket)
            if writtenNow > writtenAtStart { figures.killsDuringDiskWrites += 1 }
            figures.diskBytesWritten += writtenNow
            let phase = chats.phaseSnapshot()
            chats.stop()
            kill(d.processIdentifier, SIGKILL)
            d.waitUntilExit()
            group.wait()
            chats.resume()
            figures.kills += 1
            if phase.decoding { figures.killsDuringDecode += 1 } else if phase.waiting { figures.killsDuringPrefillOrQueue += 1 }
            if let since = phase.sinceLastAck, since < 0.05 { figures.killsWithin50msOfAck += 1 }
        }

        figures.turnsAcknowledged = chats.acks
        let restart = figures.restartSeconds.sorted()
        ReliabilityScale.report("crash-safety", [
            "seed": seed, "kills": figures.kills, "chats": chatCount, "sessions_checked": figures.sessionsChecked,
            "mismatches": figures.mismatches, "acknowledged_turns_lost": figures.lostTurns,
            "corrupt_blocks": figures.corruptBlocks, "turns_acknowledged": figures.turnsAcknowledged,
            "kills_during_decode": figures.killsDuringDecode, "kills_during_prefill_or_queue": figures.killsDuringPrefillOrQueue,
            "kills_within_50ms_of_an_ack": figures.killsWithin50msOfAck,
            "tokens_reused_after_restart": figures.tokensReused, "blocks_recomputed_after_restart": figures.blocksRecovered,
            "disk_bytes_written_before_kills": figures.diskBytesWritten, "kills_after_disk_writes_in_the_same_cycle": figures.killsDuringDiskWrites,
            "disk_hits_after_restart": figures.diskHits, "dram_hits_after_restart": figures.dramHits,
            "restart_seconds_p50": restart.isEmpty ? 0 : restart[restart.count / 2], "restart_seconds_max": restart.last ?? 0,
        ])
        XCTAssertEqual(figures.kills, kills)
        XCTAssertEqual(figures.mismatches, 0, "a next turn differed from recomputation: \(figures.mismatchDetails)")
        XCTAssertEqual(figures.lostTurns, 0, "acknowledged turns lost: \(figures.lostDetails)")
        XCTAssertEqual(figures.corruptBlocks, 0, "blocks failed their checksum without an injected fault")
        XCTAssertGreaterThan(figures.sessionsChecked, kills, "each restart checks the chats")
        XCTAssertGreaterThan(figures.tokensReused, 0, "restarts continue from stored KV, not only from recomputation")
    }

    /// Bytes the disk tier has taken in since kvtierd started.
    private func diskBytesWritten(_ socket: String) -> Int {
        guard let text = try? rawRequest(socket, "GET", "/metrics").1 else { return 0 }
        return Int(metricValue(text, "kvtier_tier_bytes_in_total", labels: "tier=\"disk\""))
    }

    /// After a restart: every chat with an acknowledged turn is checked against the reference
    /// daemon, and its checked turn becomes part of its history.
    private func verifyEveryChat(_ chats: CrashChats, socket: String, refSocket: String, cycle: Int, figures: inout CrashFigures) throws {
        for i in 0..<chats.count {
            let c = chats.snapshot(i)
            if c.acked > 0 {
                let detail = try request(socket, "GET", "/v1/sessions/\(c.session)")
                let stored = detail.json["tokens"] as? Int ?? 0
                // The last generated token is fed back only if the reply stopped before max_tokens.
                if detail.status != 200 || stored < c.lastAckTokens - 1 {
                    figures.lostTurns += 1
                    figures.lostDetails.append("\(c.session): status \(detail.status), \(stored) tokens stored, \(c.lastAckTokens) acknowledged")
                }
            }
            let messages = [("system", Self.system)] + c.history + [("user", c.nextUserMessage)]
            let served = try chat(socket, messages, session: c.anonymous ? nil : c.session, maxTokens: 8)
            let recomputed = try chat(refSocket, messages, session: "ref-\(cycle)-\(i)", maxTokens: 8)
            _ = try request(refSocket, "DELETE", "/v1/sessions/ref-\(cycle)-\(i)")
            XCTAssertEqual(served.status, 200, "\(served.json)")
            XCTAssertEqual(recomputed.status, 200, "\(recomputed.json)")
            guard served.status == 200, recomputed.status == 200, let a = replyText(served.json), let b = replyText(recomputed.json) else { continue }
            figures.sessionsChecked += 1
            let report = served.json["kvtier"] as? [String: Any] ?? [:]
            figures.tokensReused += report["tokens_reused"] as? Int ?? 0
            figures.blocksRecovered += report["blocks_recovered"] as? Int ?? 0
            let hits = report["hits"] as? [String: Any] ?? [:]
            figures.diskHits += hits["disk"] as? Int ?? 0
            figures.dramHits += hits["dram"] as? Int ?? 0
            if a != b {
                figures.mismatches += 1
                figures.mismatchDetails.append("\(c.session) turn \(c.acked + 1): served \(a.debugDescription), recomputed \(b.debugDescription)")
            }
            let usage = served.json["usage"] as? [String: Any] ?? [:]
            chats.acknowledge(
                i, reply: a, tokens: (usage["prompt_tokens"] as? Int ?? 0) + (usage["completion_tokens"] as? Int ?? 0),
                session: served.json["session_id"] as? String)
        }
        let metrics = try rawRequest(socket, "GET", "/metrics").1
        figures.corruptBlocks += Int(metricValue(metrics, "kvtier_tier_checksum_failures_total"))
    }
}

struct CrashFigures {
    var kills = 0
    var killsDuringDecode = 0
    var killsDuringPrefillOrQueue = 0
    var killsWithin50msOfAck = 0
    var sessionsChecked = 0
    var mismatches = 0
    var mismatchDetails: [String] = []
    var lostTurns = 0
    var lostDetails: [String] = []
    var corruptBlocks = 0
    var turnsAcknowledged = 0
    var tokensReused = 0
    var blocksRecovered = 0
    var diskHits = 0
    var dramHits = 0
    var diskBytesWritten = 0
    var killsDuringDiskWrites = 0
    var restartSeconds: [Double] = []
}

/// The chats' client-side state, shared by the driver threads and the test (guarded by `lock`).
final class CrashChats: @unchecked Sendable {
    struct Chat {
        /// The session (for a chat without session ids, the one its last acknowledged turn ran in).
        var session: String
        /// Sends no session id.
        var anonymous = false
        var generation = 0
        var history: [(String, String)] = []
        var acked = 0
        var lastAckTokens = 0
        var nextUserMessage: String
    }

    struct Phase {
        var waiting = false
        var decoding = false
        var sinceLastAck: Double?
    }

    enum InFlight { case waiting, decoding }

    let count: Int
    let maxTurns: Int
    private let lock = NSLock()
    private var chats: [Chat]
    private var inFlight: [InFlight?]
    private var stopped = false
    private var ackCount = 0
    private var lastAck: Date?

    init(count: Int, maxTurns: Int) {
        self.count = count
        self.maxTurns = maxTurns
        chats = (0..<count).map {
            Chat(
                session: "crash-\($0)-0", anonymous: $0 % 2 == 1,
                nextUserMessage: CrashSafetyTests.prompts[$0 % CrashSafetyTests.prompts.count])
        }
        inFlight = Array(repeating: nil, count: count)
    }

    var acks: Int { lock.withLock { ackCount } }

    func snapshot(_ i: Int) -> Chat { lock.withLock { chats[i] } }

    func stop() { lock.withLock { stopped = true } }
    func resume() { lock.withLock { stopped = false } }

    func phaseSnapshot() -> Phase {
        lock.withLock {
            Phase(waiting: inFlight.contains { $0 == .waiting }, decoding: inFlight.contains { $0 == .decoding },
                  sinceLastAck: lastAck.map { Date().timeIntervalSince($0) })
        }
    }

    /// Records an acknowledged turn; a chat that reached `maxTurns` starts a new session.
    func acknowledge(_ i: Int, reply: String, tokens: Int, session: String?) {
        lock.withLock {
            var c = chats[i]
            if c.anonymous, let session { c.session = session }
            c.history += [("user", c.nextUserMessage), ("assistant", reply)]
            c.acked += 1
            c.lastAckTokens = tokens
            c.nextUserMessage = CrashSafetyTests.prompts[(i * 3 + c.history.count / 2) % CrashSafetyTests.prompts.count]
            if c.acked >= maxTurns {
                c.generation += 1
                c.session = "crash-\(i)-\(c.generation)"
                c.history = []
                c.acked = 0
                c.lastAckTokens = 0
            }
            chats[i] = c
            ackCount += 1
            lastAck = Date()
        }
    }

    /// One chat's client loop: streamed turns until `stop()`.
    func drive(_ i: Int, socket: String) {
        while true {
            let (chat, done): (Chat, Bool) = lock.withLock {
                if !stopped { inFlight[i] = .waiting }
                return (chats[i], stopped)
            }
            if done { return }
            let messages = [("system", CrashSafetyTests.system)] + chat.history + [("user", chat.nextUserMessage)]
            let turn = streamChat(socket, messages: messages, session: chat.anonymous ? nil : chat.session,
                                  maxTokens: 24, onFirstChunk: { self.lock.withLock { self.inFlight[i] = .decoding } })
            lock.withLock { inFlight[i] = nil }
            if turn.completed && turn.error == nil {
                acknowledge(
                    i, reply: turn.content, tokens: turn.promptTokens + turn.completionTokens, session: turn.sessionID)
            } else {
                usleep(50_000)  // refused (429), or the daemon is gone
            }
        }
    }
}
