import Foundation
import XCTest

@testable import KVTierServer

/// Fuzz target `toml-config`: mutated configuration files through the daemon's own TOML reader
/// and key setter (`DaemonConfiguration.apply(toml:source:)`). Every input is applied or
/// rejected with a `DaemonConfiguration.Failure` whose message names the file.
final class ConfigFuzzTests: XCTestCase {
    static var corpus: [[UInt8]] {
        let shipped = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../deploy/kvtierd.toml")
        var c = [
            """
            # every key, set
            [server]
            socket = "/run/kvtierd/kvtierd.sock"
            socket_mode = "0600"
            socket_group = "kvtier"
            admin_group = "kvtier-admin"
            tcp_listen = "127.0.0.1:8080"
            max_body_bytes = 1048576
            max_tokens = 1_000
            max_messages = 12
            max_queue = 3
            idle_timeout_seconds = 0.5
            request_timeout_seconds = 2.5
            flush_on_stop = false
            [log]
            level = "debug"
            [model]
            path = "models/a \\"b\\".gguf"
            threads = 2
            [store]
            state_directory = "s\\tt"
            hbm_bytes = "1.5GiB"
            dram_bytes = "20 GB"
            disk_bytes = "1TiB"
            block_tokens = 16
            link_bandwidth_bytes_per_second = 0
            link_latency_us = 1e3
            policy = "lru"
            kv_precision = "f32"
            [engine]
            context_window = 512
            sink_tokens = 0
            look_ahead = 1024
            read_ahead_layers = 0
            truncation_fraction = 0.9
            """,
            "[server]\ntcp_listen = \"[::1]:1\"\nmax_body_bytes = \"12KB\"\n[ store ]\nhbm_bytes = \"7B\"  # c\n",
        ].map { Array($0.utf8) }
        if let text = FileManager.default.contents(atPath: shipped.path) { c.append(Array(text)) }
        return c
    }

    static let dictionary = [
        "[server]", "[store]", "[engine]", "[[a]]", "[]", "=", " = ", "\"", "\\", "#", "\n", "\r\n", "KiB", "MiB", "GiB", "TiB", "KB", "GB", "B",
        "e308", "inf", "nan", "-", "_", ".", "true", "false", "0o777", "\"0777\"", "\"99999\"", "localhost:", "[::1]:", ":0", ":65536",
    ]

    func testConfigFuzz() {
        let mutator = ByteMutator(corpus: Self.corpus, formats: [], dictionary: Self.dictionary)
        FuzzRunner(target: "toml-config", quickInputs: 10_000).run(generate: { mutator.generate(&$0) }) { input, _ in
            try Self.check(input)
        }
    }

    /// Found as input #70 of seed 0x4b56546965722026: a size whose bytes do not fit an Int
    /// ("99999999999999999999999999999999999999MiB", "1e999GiB" = infinity) trapped in `Int(_:)`.
    func testHugeSizes_areRejectedNotTrapped() throws {
        for size in ["99999999999999999999999999999999999999MiB", "1e999GiB", "9.3e18B", "8388608TiB", "inf KB"] {
            var config = DaemonConfiguration()
            XCTAssertThrowsError(try config.apply(toml: "[store]\nhbm_bytes = \"\(size)\"\n", source: "fuzz.toml"), size) { error in
                XCTAssertTrue("\(error)".contains("'store.hbm_bytes' must be a positive size"), "\(error)")
            }
        }
        var config = DaemonConfiguration()
        XCTAssertNoThrow(try config.apply(toml: "[store]\nhbm_bytes = \"8388607TiB\"\n", source: "fuzz.toml"))
        XCTAssertEqual(config.hbmBytes, 8_388_607 << 40)
    }

    static func check(_ input: [UInt8]) throws -> String {
        var config = DaemonConfiguration()
        do {
            try config.apply(toml: String(decoding: input, as: UTF8.self), source: "fuzz.toml")
        } catch {
            guard error.description.hasPrefix("fuzz.toml"), error.description.count > "fuzz.toml: ".count else {
                throw FuzzRunner.Violation("error without the file or a reason: \(error.description.debugDescription)")
            }
            return String(error.description.prefix(while: { $0 != "'" }).filter { !$0.isNumber }.prefix(40))
        }
        let l = config.limits
        guard l.maxBodyBytes > 0, l.maxTokens >= 1, l.maxMessages >= 1, l.maxQueue >= 1, l.idleTimeoutSeconds > 0, l.requestTimeoutSeconds > 0,
            config.hbmBytes > 0, config.dramBytes > 0, config.diskBytes > 0, config.blockTokens > 0
        else { throw FuzzRunner.Violation("accepted a configuration with a non-positive limit") }
        return "ok"
    }
}
