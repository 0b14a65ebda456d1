import Foundation
import KVTierModel
import KVTierStore
import XCTest

/// Restart time with a full disk tier: the state directory is filled with 1 MB blocks of the
/// real model's fingerprint (256 MiB quick, 10 GiB with `KVTIER_RELIABILITY=full`), then kvtierd
/// is started on it and timed from exec to the first `/healthz` answer. The index is rebuilt from
/// the small index records only, so the time should not grow with the stored bytes.
final class RestartTimeTests: XCTestCase {
    func testRestartTimeWithAFullDiskTier() throws {
        let targetBytes = ReliabilityScale.pick(quick: 256, full: 10 * 1024) << 20
        let dir = try temporaryDirectory(self)
        let state = dir + "/state"
        guard FileManager.default.fileExists(atPath: daemonTestModel) else { throw XCTSkip("model not found") }

        // An empty start, for comparison (the model load dominates).
        let emptyStart = Date()
        var daemon = try startDaemon(socket: dir + "/k.sock", state: dir + "/empty")
        let emptySeconds = Date().timeIntervalSince(emptyStart)
        stop(daemon)

        let fingerprint = ModelFingerprint(model: try LlamaModel(path: daemonTestModel))
        let fillStart = Date()
        var stored = 0, blocks = 0
        do {
            let disk = try DiskTier(directory: state, capacityBytes: targetBytes * 2)
            let tokens = 1365  // 1,048,320 bytes of F16 KV per block, as a 1 MB chunk of one layer
            var rng = SplitMix64(seed: 7)
            let payload = SyntheticKVBlocks.payload(tokens: tokens, rowWidth: SyntheticKVBlocks.rowWidth, elementType: .f16, rng: &rng)
            while stored < targetBytes {
                let key = BlockKey(model: fingerprint, session: "fill-\(blocks / 30)", layer: blocks % 30, start: 0, count: tokens)
                try disk.put(KVBlock(key: key, elementType: .f16, rowWidth: SyntheticKVBlocks.rowWidth, payload: payload), sync: false)
                blocks += 1
                stored = disk.stats.storedBytes
            }
            try disk.close()
        }
        let fillSeconds = Date().timeIntervalSince(fillStart)

        let config = "[store]\ndisk_bytes = \"\(targetBytes * 2)\"\n"
        let start = Date()
        daemon = try startDaemon(socket: dir + "/k.sock", state: state, config: config)
        let restartSeconds = Date().timeIntervalSince(start)
        defer { stop(daemon) }
        let (status, body) = try rawRequest(dir + "/k.sock", "GET", "/v1/tiers")
        XCTAssertEqual(status, 200)
        let tiers = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [[String: Any]] ?? []
        let disk = tiers.first { $0["tier"] as? String == "disk" || $0["name"] as? String == "disk" }
        XCTAssertEqual(disk?["blocks"] as? Int, blocks, "every stored block is indexed after the restart: \(body)")

        ReliabilityScale.report("restart-time", [
            "disk_tier_bytes": stored, "blocks": blocks, "fill_seconds": fillSeconds,
            "restart_seconds": restartSeconds, "restart_seconds_empty_state": emptySeconds,
        ])
    }
}
