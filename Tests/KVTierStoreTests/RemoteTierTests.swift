import Foundation
import KVTierModel
import KVTierRedis
import KVTierTestSupport
import XCTest

@testable import KVTierStore

/// The remote tier on a real Redis Cluster: two stores on separate state directories stand for
/// two kvtierd nodes.
final class RemoteTierTests: XCTestCase {
    let model = ModelFingerprint(value: 0xABCD)
    let shape = KVShape(layers: 3, rowWidth: 3 * 64)

    private func store(
        _ cluster: RedisClusterHarness, password: String? = nil, model: ModelFingerprint? = nil, layers: Int? = nil
    ) throws -> TieredStore {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-remote-\(UUID().uuidString)")
            .path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        var c = StoreConfiguration(stateDirectory: dir)
        c.blockTokens = 16
        c.hbmCapacityBytes = 16 << 20
        c.dramCapacityBytes = 16 << 20
        c.link = .init(bandwidthBytesPerSecond: 0, latencySeconds: 0)
        var r = RemoteTierConfiguration(
            seeds: cluster.seeds, user: cluster.user, password: password ?? cluster.password)
        r.retryIntervalSeconds = 0.2
        r.ioTimeoutSeconds = 0.5
        r.retireSeconds = 0.5
        c.remote = r
        return try TieredStore(
            configuration: c, model: model ?? self.model,
            shape: KVShape(layers: layers ?? shape.layers, rowWidth: shape.rowWidth))
    }

    private func blocks(_ session: String) -> [KVBlock] {
        (0..<shape.layers).flatMap { l in
            (0..<2).map { i in
                let key = BlockKey(model: model, session: session, layer: l, start: i * 16, count: 16)
                var bytes = [UInt8](repeating: 0, count: 2 * 16 * shape.rowWidth * 2)
                for j in bytes.indices { bytes[j] = UInt8(truncatingIfNeeded: (j * 7 + l * 31 + i * 101) >> 1) }
                return KVBlock(key: key, elementType: .f16, rowWidth: shape.rowWidth, payload: bytes)
            }
        }
    }

    /// Node A computes and saves a session; returns its blocks once they are in the cluster.
    private func saveOnNodeA(_ a: TieredStore, _ session: String) throws -> [KVBlock] {
        let bs = blocks(session)
        for b in bs {
            try a.admit(b)
            a.save(b.key)
        }
        a.waitForRemoteWrites()
        return bs
    }

    func testBlocksSavedOnOneNodeLoadLayerByLayerOnAnother() throws {
        let cluster = try RedisClusterHarness()
        let a = try store(cluster)
        let b = try store(cluster)
        let saved = try saveOnNodeA(a, "1000:chat")
        XCTAssertEqual(a.stats.remote?.writes, saved.count)
        XCTAssertEqual(b.blockKeys(session: "1000:chat").count, 0, "node B knows nothing before it adopts")
        b.adoptRemote(saved.map(\.key))
        let handle = b.load(session: "1000:chat")
        for l in 0..<shape.layers {
            let load = handle.wait(layer: l)
            XCTAssertTrue(load.missing.isEmpty)
            XCTAssertEqual(load.fromRemote, 2)
            let expected = saved.filter { $0.key.layer == l }
            for (p, e) in zip(load.pages, expected) {
                XCTAssertEqual(load.sources[p.key], .remote)
                XCTAssertTrue(b.payload(inPage: p.page, rows: p.key.count) == e.payload)
            }
        }
        handle.release()
        XCTAssertEqual(b.stats.remote?.hits, saved.count)
        // Promoted into DRAM: the next load does not go to the cluster.
        XCTAssertTrue(b.dram.contains(saved[0].key))
        // Records travel too.
        try a.putMetadata(name: "session/1000:chat", value: Array("state".utf8))
        a.waitForRemoteWrites()
        XCTAssertEqual(b.metadata(name: "session/1000:chat"), Array("state".utf8))
        XCTAssertNil(b.metadata(name: "session/1000:other"))
    }

    func testABlockNoLongerReferencedLeavesTheClusterOnlyAfterAGraceUnlessWrittenAgain() throws {
        let cluster = try RedisClusterHarness()
        let a = try store(cluster)
        let saved = try saveOnNodeA(a, "1000:chat")
        let redis = RedisClusterClient(configuration: .init(seeds: cluster.seeds))
        func inCluster(_ k: BlockKey) throws -> Bool {
            let key = RemoteRecordFormat.blockKey(k, prefix: "kvtier:")
            return try redis.execute([.init([Array("EXISTS".utf8), key], key: key)])[0] == .integer(1)
        }
        let (gone, rewritten) = (saved[0], saved[1])
        try a.remove(gone.key)
        try a.remove(rewritten.key)
        try a.admit(rewritten)  // a new version under the same key, within the grace
        a.save(rewritten.key)
        a.waitForRemoteWrites()
        XCTAssertTrue(try inCluster(gone.key), "a node that read the old record can still load it")
        Thread.sleep(forTimeInterval: 1.0)
        a.waitForRemoteWrites()
        XCTAssertFalse(try inCluster(gone.key), "retired after the grace")
        XCTAssertTrue(try inCluster(rewritten.key), "a block written again is not deleted by its retirement")
        XCTAssertTrue(try inCluster(saved[2].key))
    }

    func testDamagedForeignAndOtherModelsValuesAreNeverServed() throws {
        let cluster = try RedisClusterHarness()
        let a = try store(cluster)
        let saved = try saveOnNodeA(a, "1000:chat")
        let redis = RedisClusterClient(configuration: .init(seeds: cluster.seeds))
        let prefix = "kvtier:"
        func key(_ k: BlockKey) -> [UInt8] { RemoteRecordFormat.blockKey(k, prefix: prefix) }
        // Layer 0's first block: damaged (one byte flipped); its second: another block's value.
        let v0 = try XCTUnwrap(
            redis.execute([.init([Array("GET".utf8), key(saved[0].key)], key: key(saved[0].key))])[0].bytes)
        var flipped = v0
        flipped[flipped.count - 5] ^= 0x40
        let v2 = try XCTUnwrap(
            redis.execute([.init([Array("GET".utf8), key(saved[2].key)], key: key(saved[2].key))])[0].bytes)
        _ = try redis.execute([
            .init([Array("SET".utf8), key(saved[0].key), flipped], key: key(saved[0].key)),
            .init([Array("SET".utf8), key(saved[1].key), v2], key: key(saved[1].key)),
        ])
        let b = try store(cluster)
        b.adoptRemote(saved.map(\.key))
        let handle = b.load(session: "1000:chat")
        XCTAssertEqual(Set(handle.wait(layer: 0).missing), [saved[0].key, saved[1].key])
        XCTAssertTrue(handle.wait(layer: 1).missing.isEmpty)
        handle.release()
        XCTAssertEqual(b.stats.remote?.corrupt, 2)
        // A store of another model never sees this model's blocks: its keys name its own fingerprint.
        let other = try store(cluster, model: ModelFingerprint(value: 0xBEEF))
        let foreign = saved.map {
            BlockKey(
                model: ModelFingerprint(value: 0xBEEF), session: $0.key.session, layer: $0.key.layer,
                start: $0.key.start, count: $0.key.count)
        }
        other.adoptRemote(foreign)
        let h2 = other.load(session: "1000:chat")
        XCTAssertEqual(h2.wait(layer: 2).missing.count, 2)
        h2.release()
        XCTAssertEqual(other.stats.remote?.hits, 0)
    }

    func testAnUnreachableClusterDegradesTheTierAndItRecoversByItself() throws {
        let cluster = try RedisClusterHarness()
        let a = try store(cluster)
        let health = HealthLog()
        a.remote?.onHealthChange { health.append($0) }
        for p in cluster.livePorts() { cluster.signal(p, SIGSTOP) }  // a partition: nothing answers
        let bs = blocks("1000:cut")
        for b in bs {
            try a.admit(b)
            XCTAssertEqual(a.save(b.key).wait(), .inDRAM, "saves go on locally")
        }
        a.waitForRemoteWrites()
        XCTAssertEqual(a.stats.remote?.health.state, .degraded)
        XCTAssertGreaterThan(a.stats.remote?.droppedWrites ?? 0, 0)
        // Loads still come from the local tiers.
        try a.demote(session: "1000:cut", to: .disk)
        let h = a.load(session: "1000:cut")
        XCTAssertTrue(h.wait(layer: 2).missing.isEmpty)
        h.release()
        for p in cluster.livePorts() { cluster.signal(p, SIGCONT) }
        let deadline = Date().addingTimeInterval(10)
        while a.stats.remote?.health.state != .healthy && Date() < deadline { Thread.sleep(forTimeInterval: 0.1) }
        XCTAssertEqual(a.stats.remote?.health.state, .healthy, "the tier did not recover after the partition healed")
        XCTAssertEqual(health.states, [.degraded, .healthy], "one change each way")
        _ = try saveOnNodeA(a, "1000:after")
        XCTAssertEqual(a.stats.remote?.writes, bs.count, "writes resume after recovery")
    }

    func testAStalledMasterCostsATimeoutNotOnePerLayer() throws {
        // No replicas: nothing takes the stalled master's place, so every read of its keys fails.
        let cluster = try RedisClusterHarness(replicas: 0)
        let layers = 24
        let a = try store(cluster, layers: layers)
        let bs = (0..<layers).map { l in
            let key = BlockKey(model: model, session: "1000:stuck", layer: l, start: 0, count: 16)
            let bytes = (0..<(2 * 16 * shape.rowWidth * 2)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ l) }
            return KVBlock(key: key, elementType: .f16, rowWidth: shape.rowWidth, payload: bytes)
        }
        for b in bs {
            try a.admit(b)
            a.save(b.key)
        }
        a.waitForRemoteWrites()
        // Stop (SIGSTOP: connections open, nothing answers) the master of the session's slot.
        let redis = RedisClusterClient(configuration: .init(seeds: cluster.seeds))
        _ = try redis.execute([.init(["PING"], key: nil)])
        let slot = HashSlot.of(RemoteRecordFormat.blockKey(bs[0].key, prefix: "kvtier:"))
        let master = try XCTUnwrap(redis.master(ofSlot: slot).flatMap { Int($0.split(separator: ":")[1]) })
        cluster.signal(master, SIGSTOP)
        defer { cluster.signal(master, SIGCONT) }
        let b = try store(cluster, layers: layers)
        b.adoptRemote(bs.map(\.key))
        let started = Date()
        let handle = b.load(session: "1000:stuck")
        var delivered = 0
        for l in 0..<layers {
            let load = handle.wait(layer: l)
            for p in load.pages {
                delivered += 1
                XCTAssertTrue(b.payload(inPage: p.page, rows: p.key.count) == bs[l].payload)
            }
        }
        handle.release()
        let seconds = Date().timeIntervalSince(started)
        // Without the client marking the node down, every layer would wait out its own timeouts
        // (two rounds of 0.5 s and a refresh): 24 layers, well over 20 s.
        XCTAssertLessThan(seconds, 8, "\(delivered) of \(layers) layers delivered")
        XCTAssertEqual(b.stats.remote?.health.state, .healthy, "one stalled master does not take the tier down")
    }

    func testAFullClusterStopsWritesButKeepsServingReads() throws {
        let cluster = try RedisClusterHarness()
        let a = try store(cluster)
        let saved = try saveOnNodeA(a, "1000:early")
        for m in cluster.masterPorts() {
            cluster.cli(m, ["config", "set", "maxmemory-policy", "noeviction"])
            cluster.cli(m, ["config", "set", "maxmemory", "1"])
        }
        _ = try saveOnNodeA(a, "1000:late")
        XCTAssertEqual(a.stats.remote?.health.state, .full)
        XCTAssertTrue(
            a.stats.remote?.health.reason?.contains("OOM") ?? false, "\(String(describing: a.stats.remote?.health))")
        let b = try store(cluster)
        b.adoptRemote(saved.map(\.key))
        let h = b.load(session: "1000:early")
        XCTAssertTrue(h.wait(layer: 2).missing.isEmpty, "reads go on while the cluster is full")
        h.release()
        for m in cluster.masterPorts() { cluster.cli(m, ["config", "set", "maxmemory", "0"]) }
        let deadline = Date().addingTimeInterval(10)
        while a.stats.remote?.health.state != .healthy && Date() < deadline { Thread.sleep(forTimeInterval: 0.1) }
        XCTAssertEqual(a.stats.remote?.health.state, .healthy)
    }

    func testAWrongPasswordDegradesTheTierWithAnActionableReason() throws {
        let cluster = try RedisClusterHarness(user: "kvtier", password: "right-one")
        let a = try store(cluster, password: "wrong-one")
        _ = try saveOnNodeA(a, "1000:chat")
        let h = try XCTUnwrap(a.stats.remote?.health)
        XCTAssertEqual(h.state, .degraded)
        XCTAssertTrue(h.reason?.contains("WRONGPASS") ?? false, h.summary)
        XCTAssertTrue(h.action?.contains("password_file") ?? false, h.summary)
        XCTAssertEqual(a.stats.remote?.writes, 0)
        let good = try store(cluster)
        _ = try saveOnNodeA(good, "1000:chat")
        XCTAssertEqual(good.stats.remote?.writes, 6)
    }
}

private final class HealthLog: @unchecked Sendable {
    private let lock = NSLock()
    private var all: [RemoteTierHealth.State] = []
    func append(_ h: RemoteTierHealth) { lock.withLock { all.append(h.state) } }
    var states: [RemoteTierHealth.State] { lock.withLock { all } }
}
