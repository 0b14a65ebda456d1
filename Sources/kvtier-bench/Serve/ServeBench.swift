import ArgumentParser
import Dispatch
import Foundation
import KVTierModel
#if canImport(Glibc)
import Glibc
#endif

/// `kvtier-bench serve`: many users chatting at once. Closed-loop clients hold multi-turn chats
/// (the server's own replies sent back as history) against kvtierd over its Unix socket and
/// against llama.cpp's llama-server (continuous batching, `-np N`) over loopback, with the same
/// client, for each client count, one server after the other in one sitting (docs/benchmarks.md).
struct ServeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Concurrent multi-turn chats against kvtierd and llama-server: TTFT, inter-token latency, throughput.")

    @Option(name: .long, help: "GGUF model file (default: $KVTIER_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?
    @Option(help: "Client counts, comma-separated.") var clients = "1,4,8,16,32"
    @Option(help: "Turns per chat.") var turns = 4
    @Option(help: "Tokens per reply (both servers generate exactly this many: ignore_eos).") var maxTokens = 64
    @Option(help: "Sampling temperature the clients ask for (0: greedy; OpenAI clients commonly send 0.7-1).")
    var temperature = 0.0
    @Flag(help: "Let replies end at the model's end of turn (no ignore_eos), e.g. for servers that do not know it.")
    var naturalStop = false
    @Option(help: "Compute threads of both servers.") var threads = 2
    @Option(help: "kvtierd binary (default: the one beside this kvtier-bench).") var kvtierd: String?
    @Option(help: "Extra kvtierd arguments, space-separated (e.g. \"--max-batch 8\").") var kvtierdArgs = ""
    @Option(help: "Measure the kvtierd already listening on this socket instead of starting one (no peak RSS then).")
    var socket: String?
    @Option(help: "llama-server binary (default: deploy/bench/llama-server.sh's build, if there); \"\" runs kvtierd alone.")
    var llamaServer: String?
    @Option(help: "llama-server context tokens per slot (-c is this times the client count).") var slotContext = 4096
    @Option(help: "Loopback port for llama-server.") var port: UInt16 = 18_471
    @Option(help: """
        Also measure a long reply in flight: one client asks for this many tokens, and once it streams, \
        another asks for 3 tokens; its TTFT is reported (0: skip).
        """)
    var longReply = 4096
    @Option(help: "First seed of the clients' messages and session ids (each client count adds one).") var seed = 0
    @Option(help: "Write serve.json and serve.md here.") var out: String?
    @Flag(help: "Print one JSON object on stdout (no progress, no table).") var json = false

    /// One server at one client count.
    struct Point: Codable {
        var server: String
        var clients: Int
        var turns: Int
        var errors: Int
        var ttftMsP50: Double?
        var ttftMsP99: Double?
        var interTokenMsP50: Double?
        var interTokenMsP99: Double?
        var generatedTokensPerSecond: Double
        var turnsPerSecond: Double
        var wallSeconds: Double
        var peakRSSMiB: Double?
        var firstError: String?
        /// GET /healthz and /metrics every 50 ms during the run, answered in (ms).
        var probeMsP50: Double?
        var probeMsP99: Double?
    }

    /// Another user's short request while a long reply streams.
    struct LongReplyPoint: Codable {
        var server: String
        var longReplyTokens: Int
        var shortRequestTTFTMs: Double?
        var error: String?
    }

    struct Report: Codable {
        var model: String
        var threads: Int
        var turnsPerChat: Int
        var replyTokens: Int
        var temperature: Double?
        var kvtierdArgs: String
        var llamaServer: String?
        var points: [Point]
        var longReply: [LongReplyPoint]
    }

    func run() throws {
        let modelPath = ModelLocator.resolve(flag: model)
        guard FileManager.default.fileExists(atPath: modelPath) else { throw ValidationError("no model at \(modelPath); run: make model") }
        let counts = clients.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }.filter { $0 > 0 }
        guard !counts.isEmpty else { throw ValidationError("--clients needs at least one positive count") }
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let kvtierdPath = kvtierd ?? here + "/kvtierd"
        guard socket != nil || FileManager.default.isExecutableFile(atPath: kvtierdPath) else {
            throw ValidationError("no kvtierd binary at \(kvtierdPath); build it (swift build -c release) or pass --kvtierd")
        }
        let llama = try resolveLlamaServer()
        if llama == nil && llamaServer == nil && !json {
            print("llama-server: not built (deploy/bench/llama-server.sh build); measuring kvtierd alone")
        }

        var points: [Point] = []
        var long: [LongReplyPoint] = []
        for (round, n) in counts.enumerated() {
            points.append(try measureKVTierd(binary: kvtierdPath, model: modelPath, clients: n, seed: seed + round))
            if let llama { points.append(try measureLlama(binary: llama, model: modelPath, clients: n, seed: seed + round)) }
        }
        if longReply > 0 {
            long.append(try longReplyKVTierd(binary: kvtierdPath, model: modelPath))
            if let llama { long.append(try longReplyLlama(binary: llama, model: modelPath)) }
        }
        let report = Report(
            model: modelPath, threads: threads, turnsPerChat: turns, replyTokens: maxTokens, temperature: temperature, kvtierdArgs: kvtierdArgs,
            llamaServer: llama, points: points, longReply: long)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(report)
        if let out {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            try data.write(to: URL(fileURLWithPath: out + "/serve.json"))
            try Data(markdown(report).utf8).write(to: URL(fileURLWithPath: out + "/serve.md"))
        }
        if json {
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(markdown(report))
        }
    }

    private func resolveLlamaServer() throws -> String? {
        if let llamaServer { return llamaServer.isEmpty ? nil : llamaServer }
        let script = "deploy/bench/llama-server.sh"
        guard FileManager.default.isExecutableFile(atPath: script) else { return nil }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [script, "path"]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        let path = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return p.terminationStatus == 0 && !path.isEmpty ? path : nil
    }

    // MARK: Servers

    private func startKVTierd(binary: String, model: String) throws -> (ServerProcess, StreamingHTTPClient) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-serve-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let socket = dir + "/kvtierd.sock"
        var args = ["--socket", socket, "--state-dir", dir + "/state", "--model", model, "--threads", String(threads)]
        args += kvtierdArgs.split(separator: " ").map(String.init)
        let server = try ServerProcess(binary: binary, arguments: args, log: dir + "/kvtierd.log", cleanup: dir)
        let client = StreamingHTTPClient(endpoint: .unix(socket))
        try server.waitUntilReady { (try? client.get("/healthz")) == 200 }
        return (server, client)
    }

    private func startLlama(binary: String, model: String, slots: Int) throws -> (ServerProcess, StreamingHTTPClient) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-serve-llama-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let args = [
            "-m", model, "--host", "127.0.0.1", "--port", String(port), "-np", String(slots), "-c", String(slotContext * slots),
            "-t", String(threads),
        ]
        let server = try ServerProcess(binary: binary, arguments: args, log: dir + "/llama-server.log", cleanup: dir)
        let client = StreamingHTTPClient(endpoint: .tcp(host: "127.0.0.1", port: port))
        try server.waitUntilReady { (try? client.get("/health")) == 200 }
        return (server, client)
    }

    private func measureKVTierd(binary: String, model: String, clients n: Int, seed: Int) throws -> Point {
        if let socket {
            return measure("kvtierd", client: StreamingHTTPClient(endpoint: .unix(socket)), server: nil, clients: n, sessionIDs: true, seed: seed)
        }
        let (server, client) = try startKVTierd(binary: binary, model: model)
        defer { server.stop() }
        return measure("kvtierd", client: client, server: server, clients: n, sessionIDs: true, seed: seed)
    }

    private func measureLlama(binary: String, model: String, clients n: Int, seed: Int) throws -> Point {
        let (server, client) = try startLlama(binary: binary, model: model, slots: n)
        defer { server.stop() }
        return measure("llama-server -np \(n)", client: client, server: server, clients: n, sessionIDs: false, seed: seed)
    }

    private func measure(_ name: String, client: StreamingHTTPClient, server: ServerProcess?, clients n: Int, sessionIDs: Bool, seed: Int) -> Point {
        let load = ServeLoad(
            client: client,
            configuration: .init(
                clients: n, turns: turns, maxTokens: maxTokens, sendSessionID: sessionIDs, ignoreEOS: !naturalStop, seed: seed,
                temperature: temperature))
        let quiet = json || isatty(STDERR_FILENO) == 0
        let probe = Prober(client: client, paths: sessionIDs ? ["/healthz", "/metrics"] : ["/health", "/metrics"])
        let started = DispatchTime.now().uptimeNanoseconds
        defer { probe.stop() }
        let results = load.run { done, total in
            guard !quiet else { return }
            let elapsed = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
            FileHandle.standardError.write(Data("\r\(name), \(n) clients: \(done)/\(total) turns, \(String(format: "%.0f", elapsed)) s   ".utf8))
        }
        if !quiet { FileHandle.standardError.write(Data("\n".utf8)) }
        let wall = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        let ok = results.filter { $0.error == nil }
        let ttft = ok.compactMap(\.ttftMs).sorted()
        let gaps = ok.flatMap(\.gapsMs).sorted()
        return Point(
            server: name, clients: n, turns: ok.count, errors: results.count - ok.count,
            ttftMsP50: Self.percentile(ttft, 50), ttftMsP99: Self.percentile(ttft, 99),
            interTokenMsP50: Self.percentile(gaps, 50), interTokenMsP99: Self.percentile(gaps, 99),
            generatedTokensPerSecond: Double(ok.reduce(0) { $0 + $1.tokens }) / wall, turnsPerSecond: Double(ok.count) / wall,
            wallSeconds: wall, peakRSSMiB: server?.peakRSSMiB, firstError: results.first { $0.error != nil }?.error,
            probeMsP50: Self.percentile(probe.stop(), 50), probeMsP99: Self.percentile(probe.stop(), 99))
    }

    // MARK: A long reply in flight

    private func longReplyKVTierd(binary: String, model: String) throws -> LongReplyPoint {
        let (server, client) = try startKVTierd(binary: binary, model: model)
        defer { server.stop() }
        return measureLongReply("kvtierd", client: client, sessionIDs: true)
    }

    private func longReplyLlama(binary: String, model: String) throws -> LongReplyPoint {
        let (server, client) = try startLlama(binary: binary, model: model, slots: 2)
        defer { server.stop() }
        return measureLongReply("llama-server -np 2", client: client, sessionIDs: false)
    }

    /// One client streams a `longReply`-token reply; once 32 of its tokens are out, a second
    /// client sends a short chat and waits for 3 tokens. Returns the second client's TTFT.
    private func measureLongReply(_ name: String, client: StreamingHTTPClient, sessionIDs: Bool) -> LongReplyPoint {
        let streaming = DispatchSemaphore(value: 0)
        let longTokens = TurnLog()
        let thread = Thread {
            var tokens = 0
            var signalled = false
            var body: [String: Any] = [
                "messages": [["role": "user", "content": "Write a very long story about a lighthouse keeper and the sea."]],
                "max_tokens": longReply, "temperature": 0, "stream": true, "ignore_eos": true,
                "stream_options": ["include_usage": true],
            ]
            if sessionIDs { body["session_id"] = "serve-long" }
            let data = (try? JSONSerialization.data(withJSONObject: body)) ?? Data()
            _ = try? client.postStreaming("/v1/chat/completions", body: Array(data)) { payload in
                guard payload.contains("\"content\"") else { return }
                tokens += 1
                if tokens == 32 && !signalled {
                    signalled = true
                    streaming.signal()
                }
            }
            if !signalled { streaming.signal() }
            _ = longTokens.append(.init(client: 0, turn: 0, ttftMs: nil, gapsMs: [], tokens: tokens, seconds: 0, error: nil))
        }
        thread.start()
        streaming.wait()
        let load = ServeLoad(client: client, configuration: .init(clients: 1, turns: 1, maxTokens: 3, sendSessionID: sessionIDs, seed: 99))
        let short = load.run { _, _ in }.first
        while longTokens.all.isEmpty { usleep(100_000) }
        return LongReplyPoint(
            server: name, longReplyTokens: longTokens.all.first?.tokens ?? 0, shortRequestTTFTMs: short?.ttftMs, error: short?.error)
    }

    // MARK: Output

    static func percentile(_ sorted: [Double], _ q: Double) -> Double? {
        guard !sorted.isEmpty else { return nil }
        let pos = Double(sorted.count - 1) * q / 100
        let lo = Int(pos), hi = min(lo + 1, sorted.count - 1)
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - Double(lo))
    }

    private func markdown(_ r: Report) -> String {
        func f(_ v: Double?, _ digits: Int = 0) -> String { v.map { String(format: "%.\(digits)f", $0) } ?? "-" }
        var s = "| server | clients | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | gen tok/s | turns/s | peak RSS MiB | errors | health p99 ms |\n"
        s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        for p in r.points {
            s += "| \(p.server) | \(p.clients) | \(f(p.ttftMsP50)) | \(f(p.ttftMsP99)) | \(f(p.interTokenMsP50, 1)) | \(f(p.interTokenMsP99, 1)) | "
            s += "\(f(p.generatedTokensPerSecond, 1)) | \(f(p.turnsPerSecond, 2)) | \(f(p.peakRSSMiB)) | \(p.errors) | \(f(p.probeMsP99, 1)) |\n"
        }
        if !r.longReply.isEmpty {
            s += "\n| server | long reply in flight (tokens streamed) | another user's 3-token request: TTFT ms |\n|---|---:|---:|\n"
            for l in r.longReply { s += "| \(l.server) | \(l.longReplyTokens) | \(f(l.shortRequestTTFTMs)) |\n" }
        }
        return s
    }
}
