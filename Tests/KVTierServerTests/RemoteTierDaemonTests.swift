import Foundation
import KVTierTestSupport
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

/// Several real kvtierd nodes sharing a real Redis Cluster (three masters, three replicas on
/// loopback, an ACL user whose password the nodes read from a file): a chat follows its session
/// id to any node, and a node that cannot use the cluster keeps serving from its local tiers.
final class RemoteTierDaemonTests: XCTestCase {
    private struct Node {
        let socket: String
        let process: Process
    }

    /// F32 KV, so that reuse must equal recomputation bit for bit; 16-token blocks, so that a
    /// short chat spans several.
    private func startNode(_ dir: String, _ name: String, cluster: RedisClusterHarness?, password: String? = nil) throws
        -> Node
    {
        var config = "[store]\nkv_precision = \"f32\"\nblock_tokens = 16\n"
        if let cluster {
            config +=
                "[store.remote]\nseeds = [\"\(cluster.seeds[0])\", \"\(cluster.seeds[1])\"]\nretry_seconds = 0.5\n"
            if let secret = password ?? cluster.password {
                let file = dir + "/\(name)-redis-password"
                try Data(secret.utf8).write(to: URL(fileURLWithPath: file))
                chmod(file, 0o600)
                config += "user = \"\(cluster.user ?? "default")\"\npassword_file = \"\(file)\"\n"
            }
        }
        let socket = dir + "/\(name)/k.sock"
        let p = try startDaemon(
            socket: socket, state: dir + "/\(name)/state", config: config, log: dir + "/\(name).log")
        addTeardownBlock { terminate(p) }
        return Node(socket: socket, process: p)
    }

    private func reply(_ r: (status: Int, json: [String: Any])) -> String? {
        ((r.json["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String
    }

    private func hits(_ r: (status: Int, json: [String: Any])) -> [String: Any] {
        ((r.json["kvtier"] as? [String: Any])?["hits"] as? [String: Any]) ?? [:]
    }

    private func remoteTier(_ node: Node) throws -> [String: Any] {
        let (status, body) = try rawRequest(node.socket, "GET", "/v1/tiers")
        XCTAssertEqual(status, 200)
        let tiers = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [[String: Any]] ?? []
        return tiers.first { $0["tier"] as? String == "remote" } ?? [:]
    }

    func testASecondNodeResumesAChatFromTheClusterAndRepliesAsARecomputation() throws {
        let cluster = try RedisClusterHarness(user: "kvtier", password: "pw-\(UUID().uuidString)")
        let dir = try temporaryDirectory(self)
        let a = try startNode(dir, "a", cluster: cluster)
        let b = try startNode(dir, "b", cluster: cluster)
        let fresh = try startNode(dir, "fresh", cluster: nil)

        var history: [(String, String)] = [
            ("system", "You are a concise travel guide."), ("user", "Name three things to see in Lisbon."),
        ]
        let r1 = try chat(a.socket, history, session: "trip", maxTokens: 24)
        XCTAssertEqual(r1.status, 200)
        history += [("assistant", try XCTUnwrap(reply(r1))), ("user", "Which of them is best at sunset?")]
        // Node A hands over: its writes to the cluster are done (what an operator does before a drain).
        XCTAssertEqual(try request(a.socket, "POST", "/v1/flush").status, 200)
        XCTAssertGreaterThan(try remoteTier(a)["bytes_in"] as? Int ?? 0, 0)

        let r2 = try chat(b.socket, history, session: "trip", maxTokens: 16)
        XCTAssertEqual(r2.status, 200)
        let report = try XCTUnwrap(r2.json["kvtier"] as? [String: Any])
        let reused = report["tokens_reused"] as? Int ?? 0
        XCTAssertGreaterThan(reused, 32, "node B reuses node A's KV: \(report)")
        XCTAssertEqual(hits(r2)["remote"] as? Int, reused, "every reused token came from the cluster: \(report)")
        // Each of the model's 30 layers read its blocks in one timed pipeline.
        let metrics = try rawRequest(b.socket, "GET", "/metrics").1
        XCTAssertTrue(
            metrics.contains("kvtier_remote_layer_read_seconds_count 30"), "one read per layer in the metrics")
        // The same turn computed from scratch on a node that never saw the chat.
        let r3 = try chat(fresh.socket, history, session: "trip", maxTokens: 16)
        XCTAssertEqual((r3.json["kvtier"] as? [String: Any])?["tokens_reused"] as? Int, 0)
        XCTAssertEqual(reply(r2), reply(r3), "KV from the cluster gives the recomputation's reply")
        XCTAssertNotNil(reply(r2))

        // The chat comes back to node A, which served turn 1: it takes B's newer record (turn 2)
        // from the cluster instead of its own, and reuses turn 2's tokens too.
        history += [("assistant", try XCTUnwrap(reply(r2))), ("user", "And at sunrise?")]
        let usage2 = try XCTUnwrap(r2.json["usage"] as? [String: Any])
        XCTAssertEqual(try request(b.socket, "POST", "/v1/flush").status, 200)
        let r4 = try chat(a.socket, history, session: "trip", maxTokens: 8)
        let back = try XCTUnwrap(r4.json["kvtier"] as? [String: Any])
        XCTAssertGreaterThanOrEqual(
            back["tokens_reused"] as? Int ?? 0, (usage2["prompt_tokens"] as? Int ?? 0) - 1,
            "node A used its own older record: \(back)")
        let r4fresh = try chat(fresh.socket, history, session: "trip-3", maxTokens: 8)
        XCTAssertEqual(reply(r4), reply(r4fresh), "the KV node A reused gives the recomputation's reply")

        // A chat that moves while its node is still writing: node A answers turn 2 and the same
        // turn reaches node B at once. The blocks A's new record no longer names are deleted only
        // after that record is out, so whichever record B reads, its blocks are there.
        var quick: [(String, String)] = [("user", "List four rivers of Europe and one fact about each.")]
        let q1 = try chat(a.socket, quick, session: "quick", maxTokens: 24)
        quick += [("assistant", try XCTUnwrap(reply(q1))), ("user", "Which is the longest?")]
        let usage1 = try XCTUnwrap(q1.json["usage"] as? [String: Any])
        let finish1 = (q1.json["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String
        let cachedAfterTurn1 =
            (usage1["prompt_tokens"] as? Int ?? 0) + (usage1["completion_tokens"] as? Int ?? 0)
            - (finish1 == "length" ? 1 : 0)
        XCTAssertEqual(try request(a.socket, "POST", "/v1/flush").status, 200)
        _ = try chat(a.socket, quick, session: "quick", maxTokens: 8)
        let q2 = try chat(b.socket, quick, session: "quick", maxTokens: 8)
        let quickReport = q2.json["kvtier"] as? [String: Any] ?? [:]
        // Turn 1's record names every token up to its reply; turn 2's, every token of the prompt.
        XCTAssertGreaterThanOrEqual(
            quickReport["tokens_reused"] as? Int ?? 0, cachedAfterTurn1, "node B found A's blocks: \(quickReport)")
        XCTAssertEqual(quickReport["blocks_recovered"] as? Int, 0, "\(quickReport)")

        XCTAssertEqual(try remoteTier(b)["checksum_failures"] as? Int, 0)
        let h = try XCTUnwrap(try remoteTier(b)["health"] as? [String: Any])
        XCTAssertEqual(h["state"] as? String, "healthy")
    }

    func testKillingAMasterWhileChatsRunServesNoWrongKVAndTheTierRecovers() throws {
        let cluster = try RedisClusterHarness(user: "kvtier", password: "pw-\(UUID().uuidString)")
        let dir = try temporaryDirectory(self)
        let a = try startNode(dir, "a", cluster: cluster)
        let b = try startNode(dir, "b", cluster: cluster)
        let fresh = try startNode(dir, "fresh", cluster: nil)
        let topics = ["volcanoes", "tides", "bread", "chess", "owls", "glaciers"]
        var histories: [String: [(String, String)]] = [:]
        for t in topics {
            var h: [(String, String)] = [("user", "Tell me one fact about \(t).")]
            let r = try chat(a.socket, h, session: t, maxTokens: 20)
            h += [("assistant", try XCTUnwrap(reply(r))), ("user", "And another one?")]
            histories[t] = h
        }
        XCTAssertEqual(try request(a.socket, "POST", "/v1/flush").status, 200)
        // The master holding the fewest session records goes, so that most chats can still be
        // resumed from the cluster (a chat whose record went with it is recomputed).
        let records = { (port: Int) in
            cluster.cli(port, ["--scan", "--pattern", "*session/*"]).split(separator: "\n").count
        }
        let victim = try XCTUnwrap(cluster.masterPorts().min { records($0) < records($1) })
        cluster.signal(victim, SIGKILL)
        // Turn 2 of every chat on node B while the replica takes over: a block the cluster cannot
        // serve (its master is down, or the promoted replica had not received it yet) is
        // recomputed, and whatever is served must give the recomputation's reply.
        for t in topics {
            let h = try XCTUnwrap(histories[t])
            let r = try chat(b.socket, h, session: t, maxTokens: 12)
            XCTAssertEqual(r.status, 200)
            let expected = try chat(fresh.socket, h, session: t, maxTokens: 12)
            XCTAssertEqual(reply(r), reply(expected), "chat '\(t)' on node B differs from its recomputation")
        }
        let tierB = try remoteTier(b)
        XCTAssertGreaterThan(tierB["hits"] as? Int ?? 0, 0, "the surviving masters served blocks: \(tierB)")
        try cluster.waitUntilServing(timeout: 20)
        // The tier recovers by itself: node A's writes reach the cluster again.
        let deadline = Date().addingTimeInterval(20)
        var healthy = false
        while !healthy && Date() < deadline {
            _ = try chat(a.socket, [("user", "Say hi \(Date().timeIntervalSince1970)")], session: nil, maxTokens: 2)
            _ = try request(a.socket, "POST", "/v1/flush")
            let h = try remoteTier(a)["health"] as? [String: Any]
            healthy = h?["state"] as? String == "healthy"
            if !healthy { Thread.sleep(forTimeInterval: 0.5) }
        }
        let last = try remoteTier(a)
        XCTAssertTrue(healthy, "node A's remote tier did not recover: \(last)")
        XCTAssertEqual(try remoteTier(b)["checksum_failures"] as? Int, 0)
    }

    func testAPartitionedClusterNeitherStallsNorStopsTheNodeAndItReconnectsByItself() throws {
        let cluster = try RedisClusterHarness()
        let dir = try temporaryDirectory(self)
        let a = try startNode(dir, "a", cluster: cluster)
        var history: [(String, String)] = [("user", "Name a planet with rings.")]
        let r1 = try chat(a.socket, history, session: "sky", maxTokens: 12)
        history += [("assistant", try XCTUnwrap(reply(r1))), ("user", "And one without?")]
        XCTAssertEqual(try request(a.socket, "POST", "/v1/flush").status, 200)
        // A partition: every node stopped, connections open, nothing answers.
        for p in cluster.livePorts() { cluster.signal(p, SIGSTOP) }
        let started = Date()
        let r2 = try chat(a.socket, history, session: "sky", maxTokens: 12)
        let took = Date().timeIntervalSince(started)
        XCTAssertEqual(r2.status, 200)
        XCTAssertGreaterThan((r2.json["kvtier"] as? [String: Any])?["tokens_reused"] as? Int ?? 0, 0)
        // The turn's own work does not touch the cluster (writes are queued behind it).
        XCTAssertLessThan(took, 5, "a turn waited for the partitioned cluster")
        _ = try request(a.socket, "POST", "/v1/flush")  // the queued writes time out: degraded
        XCTAssertEqual((try remoteTier(a)["health"] as? [String: Any])?["state"] as? String, "degraded")
        for p in cluster.livePorts() { cluster.signal(p, SIGCONT) }
        let deadline = Date().addingTimeInterval(20)
        var state = ""
        while state != "healthy" && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.25)
            state = (try remoteTier(a)["health"] as? [String: Any])?["state"] as? String ?? ""
        }
        XCTAssertEqual(state, "healthy", "the remote tier did not reconnect after the partition healed")
        terminate(a.process)
        let log = try String(contentsOfFile: dir + "/a.log", encoding: .utf8)
        XCTAssertEqual(log.components(separatedBy: "remote tier degraded").count - 1, 1, String(log.suffix(1500)))
        XCTAssertEqual(log.components(separatedBy: "remote tier healthy again").count - 1, 1, String(log.suffix(1500)))
    }

    func testAWrongPasswordLeavesTheNodeServingFromItsLocalTiersWithOneLogLine() throws {
        let cluster = try RedisClusterHarness(user: "kvtier", password: "the-right-one")
        let dir = try temporaryDirectory(self)
        let a = try startNode(dir, "a", cluster: cluster, password: "a-wrong-one")
        var history: [(String, String)] = [("user", "What is two plus two?")]
        let r1 = try chat(a.socket, history, session: "math", maxTokens: 8)
        XCTAssertEqual(r1.status, 200)
        history += [("assistant", try XCTUnwrap(reply(r1))), ("user", "And three plus three?")]
        _ = try request(a.socket, "POST", "/v1/flush")
        let r2 = try chat(a.socket, history, session: "math", maxTokens: 8)
        XCTAssertEqual(r2.status, 200)
        XCTAssertGreaterThan((r2.json["kvtier"] as? [String: Any])?["tokens_reused"] as? Int ?? 0, 0)
        let h = try XCTUnwrap(try remoteTier(a)["health"] as? [String: Any])
        XCTAssertEqual(h["state"] as? String, "degraded")
        XCTAssertTrue((h["reason"] as? String ?? "").contains("WRONGPASS"), "\(h)")
        let healthz = try request(a.socket, "GET", "/healthz").json
        XCTAssertEqual(healthz["status"] as? String, "ok", "a degraded remote tier does not make the node unhealthy")
        XCTAssertEqual((healthz["remote"] as? [String: Any])?["state"] as? String, "degraded")
        let (status, out) = try kvtierctl(["status", "--socket", a.socket])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("remote: DEGRADED"), out)
        terminate(a.process)
        let log = try String(contentsOfFile: dir + "/a.log", encoding: .utf8)
        let lines = log.split(separator: "\n").filter { $0.contains("remote tier degraded") }
        XCTAssertEqual(lines.count, 1, "one log line for the change, not one per failed write:\n\(log.suffix(2000))")
        XCTAssertTrue(lines.first?.contains("password_file") ?? false, "\(lines)")
    }
}
