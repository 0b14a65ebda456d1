import Dispatch
import Foundation

/// Closed-loop chat clients against one OpenAI-compatible server: each client holds one
/// multi-turn chat, sends a turn, reads the streamed reply to its end, appends the reply the
/// server generated to its history, and sends the next turn at once (no think time).
///
/// Figures, all from the client's side: TTFT from the moment the request is written (the
/// client's whole wait, queueing included) to the first event with reply text; inter-token
/// latency as the gaps between successive text events; generated tokens as the server reports
/// them (`usage.completion_tokens`, else one per text event).
struct ServeLoad {
    struct Configuration: Sendable {
        var clients: Int
        var turns: Int
        var maxTokens: Int
        /// kvtierd's session extension: each client names its chat.
        var sendSessionID: Bool
        /// Generate exactly maxTokens (`ignore_eos`): every turn's reply has the same length on both servers.
        var ignoreEOS = true
        /// A seed that makes the clients' messages differ between runs of one sitting.
        var seed = 0
        /// What the clients ask for (0: greedy).
        var temperature = 0.0
    }

    /// One finished (or failed) turn.
    struct Turn: Sendable {
        var client: Int
        var turn: Int
        var ttftMs: Double?
        var gapsMs: [Double]
        var tokens: Int
        var seconds: Double
        var error: String?
    }

    static let questions = [
        "What is a good way to learn a new programming language?",
        "Can you explain how a hash table works?",
        "Give me three ideas for a weekend trip near the mountains.",
        "Why is the sky blue? Keep it short.",
        "What should I cook tonight with rice, eggs and spinach?",
        "Summarize the plot of a famous novel of your choice.",
        "How do I keep a sourdough starter alive?",
        "What are the pros and cons of electric cars?",
        "Explain recursion to a ten year old.",
        "Suggest a name for a small coffee shop.",
        "How does a bicycle stay upright?",
        "What is the difference between weather and climate?",
        "Write a haiku about autumn.",
        "How can I improve my sleep?",
        "What is a good stretching routine for the morning?",
        "Tell me a fun fact about octopuses.",
    ]

    /// The user message of `client`'s turn `turn`.
    static func message(client: Int, turn: Int, seed: Int) -> String {
        let q = questions[(client * 7 + turn * 3 + seed) % questions.count]
        return turn == 0 ? "Hello, I am user \(client + 1000 * seed). \(q)" : q
    }

    let client: StreamingHTTPClient
    let configuration: Configuration

    /// Runs every client to its last turn; `progress(done, total)` after each turn.
    func run(progress: @escaping @Sendable (Int, Int) -> Void) -> [Turn] {
        let results = TurnLog()
        let total = configuration.clients * configuration.turns
        let group = DispatchGroup()
        for c in 0..<configuration.clients {
            group.enter()
            let thread = Thread { [self] in
                var messages: [[String: String]] = [["role": "system", "content": "You are a helpful assistant."]]
                for t in 0..<configuration.turns {
                    messages.append(["role": "user", "content": Self.message(client: c, turn: t, seed: configuration.seed)])
                    var turn = Turn(client: c, turn: t, ttftMs: nil, gapsMs: [], tokens: 0, seconds: 0, error: nil)
                    let reply = send(messages, client: c, into: &turn)
                    messages.append(["role": "assistant", "content": reply])
                    progress(results.append(turn), total)
                }
                group.leave()
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        group.wait()
        return results.all
    }

    /// One streamed turn; returns the reply text.
    private func send(_ messages: [[String: String]], client c: Int, into turn: inout Turn) -> String {
        var body: [String: Any] = [
            "model": "default", "messages": messages, "max_tokens": configuration.maxTokens, "temperature": configuration.temperature, "stream": true,
            "stream_options": ["include_usage": true], "cache_prompt": true,
        ]
        if configuration.ignoreEOS { body["ignore_eos"] = true }
        if configuration.sendSessionID { body["session_id"] = "serve-\(configuration.seed)-\(c)" }
        guard let data = try? JSONSerialization.data(withJSONObject: body) else {
            turn.error = "cannot encode the request"
            return ""
        }
        var reply = ""
        var textEvents = 0
        var reported: Int?
        var last: UInt64?
        let start = DispatchTime.now().uptimeNanoseconds
        do {
            _ = try client.postStreaming("/v1/chat/completions", body: Array(data)) { payload in
                guard payload != "[DONE]", let object = try? JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any]
                else { return }
                if let usage = object["usage"] as? [String: Any], let n = usage["completion_tokens"] as? Int { reported = n }
                if let error = object["error"] as? [String: Any] { turn.error = "\(error["message"] ?? error)" }
                guard let choices = object["choices"] as? [[String: Any]], let delta = choices.first?["delta"] as? [String: Any],
                    let text = delta["content"] as? String, !text.isEmpty
                else { return }
                let now = DispatchTime.now().uptimeNanoseconds
                if let last {
                    turn.gapsMs.append(Double(now - last) / 1e6)
                } else {
                    turn.ttftMs = Double(now - start) / 1e6
                }
                last = now
                textEvents += 1
                reply += text
            }
        } catch {
            turn.error = "\(error)"
        }
        turn.seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        turn.tokens = reported ?? textEvents
        if turn.error == nil && turn.ttftMs == nil { turn.error = "no reply text" }
        return reply
    }
}

/// Turns finished by the client threads.
final class TurnLog: @unchecked Sendable {
    private let lock = NSLock()
    private var turns: [ServeLoad.Turn] = []

    /// Appends and returns how many turns are done.
    func append(_ t: ServeLoad.Turn) -> Int { lock.withLock { turns.append(t); return turns.count } }
    var all: [ServeLoad.Turn] { lock.withLock { turns } }
}

/// Polls a server's health and metrics endpoints every 50 ms on a thread of its own while a load
/// runs, and keeps each answer's latency: what an operator's checks see under load.
final class Prober: @unchecked Sendable {
    private let lock = NSLock()
    private var latencies: [Double] = []
    private var running = true
    private var finished = false
    private let done = DispatchSemaphore(value: 0)

    init(client: StreamingHTTPClient, paths: [String]) {
        let thread = Thread { [self] in
            var i = 0
            while lock.withLock({ running }) {
                let t0 = DispatchTime.now().uptimeNanoseconds
                if (try? client.get(paths[i % paths.count])) == 200 {
                    let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
                    lock.withLock { latencies.append(ms) }
                }
                i += 1
                usleep(50_000)
            }
            done.signal()
        }
        thread.start()
    }

    /// Stops polling (once) and returns the latencies, sorted, in ms.
    @discardableResult
    func stop() -> [Double] {
        let wait = lock.withLock { () -> Bool in
            defer { running = false; finished = true }
            return !finished
        }
        if wait { done.wait() }
        return lock.withLock { latencies.sorted() }
    }
}
