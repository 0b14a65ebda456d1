import ArgumentParser
import Foundation

/// `kvtierctl chat`: an interactive multi-turn chat with a running kvtierd. Each turn resends
/// the whole history (as an OpenAI client does), streams the reply and shows the turn's report.
struct DaemonChatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat", abstract: "Chat with a running kvtierd over its socket (streaming, with each turn's KV report).")
    @OptionGroup var options: DaemonOptions
    @Option(help: "Session id (default: a new one).") var session: String?
    @Option(help: "Tokens per reply at most.") var maxTokens = 256
    @Option(help: "Sampling temperature (0 = greedy).") var temperature: Float = 0.7

    func run() throws {
        let client = options.client
        let id = session ?? "cli-" + UUID().uuidString.prefix(8).lowercased()
        var history: [[String: String]] = []
        print("kvtierctl chat, session \(id) on \(client.socketPath). Empty line or Ctrl-D quits.")
        while true {
            FileHandle.standardOutput.write(Data("> ".utf8))
            guard let line = readLine(), !line.isEmpty else { break }
            history.append(["role": "user", "content": line])
            let body: [String: Any] = [
                "messages": history, "max_tokens": maxTokens, "temperature": temperature, "stream": true, "session_id": id,
            ]
            var reply = ""
            var report: [String: Any]?
            var failure: String?
            let result: (status: Int, body: Data)
            do {
                result = try client.stream("POST", "/v1/chat/completions", body: Array(try JSONSerialization.data(withJSONObject: body))) { data in
                    guard data != "[DONE]", let event = try? JSONSerialization.jsonObject(with: Data(data.utf8)) as? [String: Any] else { return }
                    if let error = event["error"] as? [String: Any] { failure = error["message"] as? String }
                    if let delta = ((event["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any])?["content"] as? String {
                        reply += delta
                        FileHandle.standardOutput.write(Data(delta.utf8))
                    }
                    if let k = event["kvtier"] as? [String: Any] { report = k }
                }
            } catch let e as DaemonClient.Failure {
                throw CLIError(e.description)
            }
            print("")
            guard result.status == 200, failure == nil else {
                let message = failure
                    ?? ((try? JSONSerialization.jsonObject(with: result.body)) as? [String: Any]).flatMap { ($0["error"] as? [String: Any])?["message"] as? String }
                    ?? "HTTP \(result.status)"
                FileHandle.standardError.write(Data("error: \(message)\n".utf8))
                history.removeLast()
                continue
            }
            history.append(["role": "assistant", "content": reply])
            if let r = report {
                let hits = r["hits"] as? [String: Any] ?? [:]
                FileHandle.standardError.write(Data(String(
                    format: "[reused %d (HBM %d, DRAM %d, disk %d), computed %d, generated %d; first token %.0f ms]\n",
                    r["tokens_reused"] as? Int ?? 0, hits["hbm"] as? Int ?? 0, hits["dram"] as? Int ?? 0, hits["disk"] as? Int ?? 0,
                    r["tokens_recomputed"] as? Int ?? 0, r["tokens_generated"] as? Int ?? 0, r["ttft_ms"] as? Double ?? 0).utf8))
            }
        }
    }
}
