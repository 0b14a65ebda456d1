import Foundation
import KVTierRedis
import KVTierTestSupport
import XCTest

/// The cluster client against a real Redis Cluster (three masters, three replicas on loopback).
final class RedisClusterClientTests: XCTestCase {
    private func client(_ cluster: RedisClusterHarness, seeds: [String]? = nil) -> RedisClusterClient {
        var c = RedisClusterClient.Configuration(seeds: seeds ?? [cluster.seeds[0]])
        if let password = cluster.password {
            c.credentials = .init(user: cluster.user, password: password)
        }
        return RedisClusterClient(configuration: c)
    }

    private func set(_ key: String, _ value: String) -> RedisClusterClient.Command {
        .init(["SET", key, value], key: key)
    }

    private func get(_ key: String) -> RedisClusterClient.Command { .init(["GET", key], key: key) }

    private func text(_ v: RESPValue) -> String? { v.bytes.map { String(decoding: $0, as: UTF8.self) } }

    func testCommandsReachTheMasterOfTheirSlotInOnePipelinePerNode() throws {
        let cluster = try RedisClusterHarness()
        let redis = client(cluster)
        let keys = (0..<300).map { "key-\($0)" }
        let replies = try redis.execute(keys.map { set($0, "v-" + $0) })
        XCTAssertTrue(replies.allSatisfy { $0 == .simpleString("OK") }, "\(replies.prefix(3))")
        XCTAssertEqual(try redis.execute(keys.map(get)).map(text), keys.map { "v-" + $0 })
        // Each master holds the keys of its slots, and the slot map agrees with the server's.
        let masters = cluster.masterPorts()
        XCTAssertEqual(masters.count, 3)
        let counts = masters.map {
            Int(cluster.cli($0, ["dbsize"]).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }
        XCTAssertEqual(counts.reduce(0, +), keys.count)
        XCTAssertTrue(counts.allSatisfy { $0 > 50 }, "\(counts)")
        for k in keys.prefix(20) {
            let slot = Int(
                cluster.cli(masters[0], ["cluster", "keyslot", k]).trimmingCharacters(in: .whitespacesAndNewlines))
            XCTAssertEqual(slot, HashSlot.of(Array(k.utf8)))
        }
        XCTAssertEqual(redis.stats.moved, 0)
    }

    func testMovedRedirectionsAreFollowedWhenASlotChangesMaster() throws {
        let cluster = try RedisClusterHarness()
        let redis = client(cluster)
        XCTAssertEqual(try redis.execute([set("moving", "before")]), [.simpleString("OK")])
        let slot = HashSlot.of(Array("moving".utf8))
        guard let source = redis.master(ofSlot: slot).flatMap({ Int($0.split(separator: ":")[1]) }) else {
            return XCTFail("no master for slot \(slot)")
        }
        let target = try XCTUnwrap(cluster.masterPorts().first { $0 != source })
        try migrate(cluster, slot: slot, key: "moving", from: source, to: target)
        // The client's map still names the old master: it gets MOVED and follows it.
        XCTAssertEqual(try redis.execute([get("moving")]).map(text), ["before"])
        XCTAssertGreaterThanOrEqual(redis.stats.moved, 1)
        XCTAssertEqual(redis.master(ofSlot: slot), "127.0.0.1:\(target)")
    }

    func testAskRedirectionsAreFollowedDuringAMigration() throws {
        let cluster = try RedisClusterHarness()
        let redis = client(cluster)
        _ = try redis.execute([get("warm")])
        let slot = HashSlot.of(Array("asked".utf8))
        let source = try XCTUnwrap(redis.master(ofSlot: slot).flatMap { Int($0.split(separator: ":")[1]) })
        let target = try XCTUnwrap(cluster.masterPorts().first { $0 != source })
        let sourceID = nodeID(cluster, source)
        let targetID = nodeID(cluster, target)
        cluster.cli(target, ["cluster", "setslot", String(slot), "importing", sourceID])
        cluster.cli(source, ["cluster", "setslot", String(slot), "migrating", targetID])
        // The key is not on the source, so the source answers ASK and the target takes it.
        XCTAssertEqual(try redis.execute([set("asked", "there")]), [.simpleString("OK")])
        XCTAssertGreaterThanOrEqual(redis.stats.asked, 1)
        XCTAssertEqual(redis.master(ofSlot: slot), "127.0.0.1:\(source)", "ASK must not change the slot map")
        for p in cluster.masterPorts() { cluster.cli(p, ["cluster", "setslot", String(slot), "node", targetID]) }
        XCTAssertEqual(try redis.execute([get("asked")]).map(text), ["there"])
    }

    func testAReplicaTakesOverAKilledMasterAndNoWrongValueIsEverRead() throws {
        let cluster = try RedisClusterHarness()
        let redis = client(cluster, seeds: cluster.seeds)
        let keys = (0..<200).map { "durable-\($0)" }
        _ = try redis.execute(keys.map { set($0, "v-" + $0) })
        // Replication is asynchronous: wait until each master's replica has the writes (WAIT on
        // the connections that wrote them, which the client routes by key).
        let acks = try redis.execute(keys.map { .init(["WAIT", "1", "2000"], key: $0) })
        XCTAssertTrue(acks.allSatisfy { $0 == .integer(1) }, "\(acks.prefix(3))")
        let victim = cluster.masterPorts()[0]
        cluster.signal(victim, SIGKILL)
        let deadline = Date().addingTimeInterval(20)
        var served = false
        while Date() < deadline && !served {
            do {
                let values = try redis.execute(keys.map(get)).map(text)
                XCTAssertEqual(values, keys.map { "v-" + $0 }, "a value read during the failover is wrong")
                served = true
            } catch {
                Thread.sleep(forTimeInterval: 0.2)  // the replica is not promoted yet
            }
        }
        XCTAssertTrue(served, "the cluster did not serve every key within 20 s of the master's death")
        XCTAssertGreaterThanOrEqual(redis.stats.topologyRefreshes, 2)
        XCTAssertFalse(cluster.masterPorts().contains(victim))
    }

    func testAWrongPasswordIsAnAuthenticationErrorAndTheRightOneWorks() throws {
        let cluster = try RedisClusterHarness(user: "kvtier", password: "s3cret-pass")
        var wrong = RedisClusterClient.Configuration(seeds: [cluster.seeds[0]])
        wrong.credentials = .init(user: "kvtier", password: "nope")
        XCTAssertThrowsError(try RedisClusterClient(configuration: wrong).execute([get("k")])) { error in
            guard case .authentication(_, let message) = error as? RedisError else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("WRONGPASS"), message)
        }
        let none = RedisClusterClient(configuration: .init(seeds: [cluster.seeds[0]]))
        XCTAssertThrowsError(try none.execute([get("k")])) { error in
            guard case .authentication = error as? RedisError else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(try client(cluster).execute([set("k", "v"), get("k")]).map(text), ["OK", "v"])
    }

    func testAnUnreachableClusterFailsFastWithAClearError() {
        var c = RedisClusterClient.Configuration(seeds: ["127.0.0.1:1"])
        c.maxAttempts = 2
        XCTAssertThrowsError(try RedisClusterClient(configuration: c).execute([get("k")])) { error in
            guard let e = error as? RedisError else { return XCTFail("\(error)") }
            XCTAssertTrue(e.description.contains("127.0.0.1:1"), e.description)
        }
    }

    // MARK: - Helpers

    private func nodeID(_ cluster: RedisClusterHarness, _ port: Int) -> String {
        cluster.cli(port, ["cluster", "myid"]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Moves `slot` (holding `key`) from one master to another, as redis-cli --cluster reshard does.
    private func migrate(_ cluster: RedisClusterHarness, slot: Int, key: String, from: Int, to: Int) throws {
        let fromID = nodeID(cluster, from)
        let toID = nodeID(cluster, to)
        cluster.cli(to, ["cluster", "setslot", String(slot), "importing", fromID])
        cluster.cli(from, ["cluster", "setslot", String(slot), "migrating", toID])
        var migrate = ["migrate", "127.0.0.1", String(to), key, "0", "5000"]
        if let password = cluster.password {
            migrate += cluster.user.map { ["auth2", $0, password] } ?? ["auth", password]
        }
        let out = cluster.cli(from, migrate)
        XCTAssertTrue(out.contains("OK"), out)
        for p in cluster.masterPorts() { cluster.cli(p, ["cluster", "setslot", String(slot), "node", toID]) }
    }
}
