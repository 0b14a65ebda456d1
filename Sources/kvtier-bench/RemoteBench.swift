import ArgumentParser
import Dispatch
import Foundation
import KVTierModel

/// `kvtier-bench remote`: what the remote tier saves a chat that moves to another node. Three
/// kvtierd nodes: A and B share a Redis Cluster (`--seeds`), C has none. Each chat's turn 1 runs
/// on A (which then hands over: POST /v1/flush); its turn 2 runs on B (KV from the cluster), on
/// C (a node that never saw it: the whole history recomputed), B and C in alternating order, and
/// then on A (KV in its own DRAM). Each chat's text is its own, so only the system prompt is
/// shared between chats. TTFT is measured by the client, from sending the request to the first
/// streamed text.
struct RemoteBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remote",
        abstract: "Turn 2 of a chat on another node: KV from the Redis Cluster against recomputation and local reuse.")

    @Option(name: .long, help: "GGUF model file (default: $KVTIER_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?
    @Option(help: "Redis Cluster nodes, comma-separated host:port (deploy/bench/redis-cluster.sh starts one).")
    var seeds: String
    @Option(help: "Approximate words of history before turn 2, comma-separated.") var historyWords = "150,600,1500"
    @Option(help: "Chats per history length.") var chats = 4
    @Option(help: "Tokens of each reply.") var maxTokens = 16
    @Option(help: "Compute threads of each node.") var threads = 2
    @Option(help: "kvtierd binary (default: the one beside this kvtier-bench).") var kvtierd: String?
    @Option(help: "Write remote.json and remote.md here.") var out: String?

    struct Sample: Codable {
        var historyWords: Int
        var promptTokens: Int
        var path: String
        var ttftMs: Double
        var tokensReused: Int
        var tokensFromCluster: Int
    }

    struct Row: Codable {
        var historyWords: Int
        var promptTokens: Int
        var path: String
        var ttftMsP50: Double
        var tokensReusedP50: Int
        var tokensFromClusterP50: Int
    }

    struct Report: Codable {
        var model: String
        var threads: Int
        var seeds: String
        var rows: [Row]
        var clusterBytesRead: Int?
        var samples: [Sample]
    }

    func run() throws {
        let modelPath = ModelLocator.resolve(flag: model)
        guard FileManager.default.fileExists(atPath: modelPath) else {
            throw ValidationError("no model at \(modelPath)")
        }
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let binary = kvtierd ?? here + "/kvtierd"
        let sizes = historyWords.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !sizes.isEmpty, chats > 0 else { throw ValidationError("--history-words and --chats must be positive") }
        let seedList = seeds.split(separator: ",").map { "\"\($0.trimmingCharacters(in: .whitespaces))\"" }
        let remoteConfig = "[store.remote]\nseeds = [\(seedList.joined(separator: ", "))]\n"
        let run = UUID().uuidString.prefix(8)
        let (a, clientA) = try start(
            binary, modelPath, name: "a", config: remoteConfig + "key_prefix = \"bench-\(run):\"\n")
        defer { a.stop() }
        let (b, clientB) = try start(
            binary, modelPath, name: "b", config: remoteConfig + "key_prefix = \"bench-\(run):\"\n")
        defer { b.stop() }
        let (c, clientC) = try start(binary, modelPath, name: "c", config: nil)
        defer { c.stop() }

        var samples: [Sample] = []
        var order = 0
        for words in sizes {
            for i in 0..<chats {
                let session = "remote-\(words)-\(i)"
                var messages: [[String: String]] = [
                    ["role": "system", "content": "You are a helpful assistant."],
                    ["role": "user", "content": Self.history(words: words, chat: i) + "\nSummarize this in one line."],
                ]
                let first = try turn(clientA, messages, session: session)
                messages += [
                    ["role": "assistant", "content": first.text],
                    ["role": "user", "content": "Thanks. One more detail?"],
                ]
                guard try clientA.post("/v1/flush", body: Array("{}".utf8)) == 200 else {
                    throw ValidationError("node A's flush failed")
                }
                var paths: [(String, StreamingHTTPClient)] = [
                    ("remote (node B)", clientB), ("recompute (node C)", clientC),
                ]
                if order % 2 == 1 { paths.reverse() }
                paths.append(("local (node A)", clientA))
                for (name, client) in paths {
                    let r = try turn(client, messages, session: session)
                    samples.append(
                        Sample(
                            historyWords: words, promptTokens: r.promptTokens, path: name, ttftMs: r.ttftMs,
                            tokensReused: r.reused, tokensFromCluster: r.fromCluster))
                }
                order += 1
                FileHandle.standardError.write(Data("words \(words) chat \(i + 1)/\(chats)\n".utf8))
            }
        }
        var rows: [Row] = []
        for words in sizes {
            for name in ["remote (node B)", "recompute (node C)", "local (node A)"] {
                let s = samples.filter { $0.historyWords == words && $0.path == name }
                rows.append(
                    Row(
                        historyWords: words, promptTokens: median(s.map(\.promptTokens)), path: name,
                        ttftMsP50: median(s.map(\.ttftMs)), tokensReusedP50: median(s.map(\.tokensReused)),
                        tokensFromClusterP50: median(s.map(\.tokensFromCluster))))
            }
        }
        let tiers = try? clientB.getJSON("/v1/tiers") as? [[String: Any]]
        let bytesRead = tiers?.first { $0["tier"] as? String == "remote" }?["bytes_out"] as? Int
        let report = Report(
            model: modelPath, threads: threads, seeds: seeds, rows: rows, clusterBytesRead: bytesRead, samples: samples)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        if let out {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            try encoder.encode(report).write(to: URL(fileURLWithPath: out + "/remote.json"))
            try Data(markdown(report).utf8).write(to: URL(fileURLWithPath: out + "/remote.md"))
        }
        print(markdown(report))
    }

    /// A deterministic text of about `words` words, different for each chat.
    static func history(words: Int, chat: Int) -> String {
        var out = ["Notes of chat \(chat) (\(words) words):"]
        var n = 0
        var k = chat
        while n < words {
            let q = ServeLoad.questions[(k * 5 + chat) % ServeLoad.questions.count]
            out.append(q)
            n += q.split(separator: " ").count
            k += 1
        }
        return out.joined(separator: " ")
    }

    private func start(_ binary: String, _ model: String, name: String, config: String?) throws
        -> (ServerProcess, StreamingHTTPClient)
    {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
            "kvtier-remote-\(name)-\(UUID().uuidString.prefix(8))"
        ).path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var args = ["--socket", dir + "/kvtierd.sock", "--state-dir", dir + "/state", "--model", model]
        args += ["--threads", String(threads)]
        if let config {
            try Data(config.utf8).write(to: URL(fileURLWithPath: dir + "/kvtierd.toml"))
            args += ["--config", dir + "/kvtierd.toml"]
        }
        let server = try ServerProcess(binary: binary, arguments: args, log: dir + "/kvtierd.log", cleanup: dir)
        let client = StreamingHTTPClient(endpoint: .unix(dir + "/kvtierd.sock"))
        try server.waitUntilReady { (try? client.get("/healthz")) == 200 }
        return (server, client)
    }

    private struct TurnResult {
        var text = ""
        var ttftMs = 0.0
        var promptTokens = 0
        var reused = 0
        var fromCluster = 0
    }

    private func turn(_ client: StreamingHTTPClient, _ messages: [[String: String]], session: String) throws
        -> TurnResult
    {
        let body: [String: Any] = [
            "messages": messages, "max_tokens": maxTokens, "temperature": 0, "stream": true,
            "stream_options": ["include_usage": true], "session_id": session,
        ]
        let data = try JSONSerialization.data(withJSONObject: body)
        var r = TurnResult()
        let start = DispatchTime.now().uptimeNanoseconds
        var first: UInt64?
        let status = try client.postStreaming("/v1/chat/completions", body: Array(data)) { payload in
            guard payload != "[DONE]",
                let object = try? JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any]
            else { return }
            if let usage = object["usage"] as? [String: Any] { r.promptTokens = usage["prompt_tokens"] as? Int ?? 0 }
            if let report = object["kvtier"] as? [String: Any] {
                r.reused = report["tokens_reused"] as? Int ?? 0
                r.fromCluster = (report["hits"] as? [String: Any])?["remote"] as? Int ?? 0
            }
            if let choices = object["choices"] as? [[String: Any]],
                let text = (choices.first?["delta"] as? [String: Any])?["content"] as? String, !text.isEmpty
            {
                if first == nil { first = DispatchTime.now().uptimeNanoseconds }
                r.text += text
            }
        }
        guard status == 200, let first else { throw ValidationError("a turn failed with status \(status)") }
        r.ttftMs = Double(first - start) / 1e6
        return r
    }

    private func median<T: Comparable>(_ xs: [T]) -> T {
        let s = xs.sorted()
        return s[s.count / 2]
    }

    private func markdown(_ r: Report) -> String {
        var lines = [
            "| history words | prompt tokens | turn 2 on | TTFT p50 (ms) | tokens reused | from the cluster |",
            "|---|---|---|---|---|---|",
        ]
        for row in r.rows {
            lines.append(
                "| \(row.historyWords) | \(row.promptTokens) | \(row.path) | "
                    + String(format: "%.1f", row.ttftMsP50)
                    + " | \(row.tokensReusedP50) | \(row.tokensFromClusterP50) |")
        }
        if let b = r.clusterBytesRead { lines.append("\nnode B read \(b) bytes from the cluster") }
        return lines.joined(separator: "\n")
    }
}
