import ArgumentParser
import Dispatch
import Foundation
import KVTierEngine
import KVTierModel
import KVTierStore

/// The prefix cache's storage: N chats that share one long system prompt, each asking its own
/// question, run through the engine the way the daemon runs requests (`sessionForRequest`, no
/// session ids). Once as one owner's chats (they share the prompt's blocks) and once with every
/// chat under its own owner (no sharing across owners: what each chat costs alone). Reports the
/// bytes each tier holds after a flush, the blocks stored and the tokens computed. With
/// `--together`, every chat's request arrives before any has run (as a burst of users does) and
/// the turns run through the scheduler's batch, as the daemon runs them.
struct SharedPrefixBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shared-prefix",
        abstract: "Chats sharing a system prompt: bytes per tier and tokens computed, one owner vs one owner each.")

    @Option(name: .long, help: "GGUF model file (default: $KVTIER_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?
    @Option(help: "Chats.") var chats = 50
    @Option(help: "Tokens of the shared system prompt (about).") var systemTokens = 500
    @Option(help: "Tokens generated per chat.") var replyTokens = 8
    @Option(help: "Threads.") var threads = 2
    @Flag(help: "All requests arrive at once and run batched (engine.max_batch at a time).") var together = false
    @Flag(help: "Print one JSON object.") var json = false

    struct Outcome: Codable {
        var owners: String
        /// Whether every request arrived before any ran (`--together`).
        var together: Bool
        var chats: Int
        var systemTokens: Int
        var hbmBytes: Int
        var dramBytes: Int
        var diskBytes: Int
        var blocksPerLayer: Int
        var tokensComputed: Int
        var tokensReused: Int
        var seconds: Double
    }

    func run() throws {
        let path = ModelLocator.resolve(flag: model)
        let m: LlamaModel
        do { m = try LlamaModel(path: path) } catch { throw ValidationError("\(error)") }
        var words: [String] = []
        let vocabulary = [
            "cache", "tier", "session", "block", "layer", "queue", "disk", "memory", "reply", "token", "answer",
            "policy", "prefetch", "eviction", "engine", "request",
        ]
        var i = 0
        while m.tokenizer.encode(words.joined(separator: " "), addSpecial: false, parseSpecial: false).count
            < systemTokens
        {
            words.append(vocabulary[i % vocabulary.count] + (i % 7 == 6 ? "." : ""))
            i += 1
        }
        let system = "You are an operator's assistant. Rules and glossary: " + words.joined(separator: " ")
        var results: [Outcome] = []
        for shared in [true, false] {
            results.append(try measure(model: m, system: system, shared: shared))
        }
        if json {
            let data = try JSONEncoder().encode(results)
            print(String(decoding: data, as: UTF8.self))
            return
        }
        print("owners          chats  HBM MiB  DRAM MiB  disk MiB  blocks/layer  computed  reused  seconds")
        for r in results {
            let mib = { (b: Int) in String(format: "%8.1f", Double(b) / 1_048_576) }
            print(
                r.owners.padding(toLength: 14, withPad: " ", startingAt: 0), String(format: "%6d", r.chats),
                mib(r.hbmBytes), " ", mib(r.dramBytes), mib(r.diskBytes), String(format: "%13d", r.blocksPerLayer),
                String(format: "%9d", r.tokensComputed), String(format: "%7d", r.tokensReused),
                String(format: "%8.1f", r.seconds))
        }
    }

    private func measure(model m: LlamaModel, system: String, shared: Bool) throws -> Outcome {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-shared-\(UUID().uuidString)")
            .path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var c = StoreConfiguration(stateDirectory: dir)
        c.hbmCapacityBytes = 256 << 20
        c.dramCapacityBytes = 2 << 30
        c.diskCapacityBytes = 4 << 30
        let store = try TieredStore(configuration: c, model: ModelFingerprint(model: m), layout: m.kvLayout)
        var e = EngineConfiguration()
        e.threads = threads
        let engine = ChatEngine(model: m, store: store, configuration: e)
        let started = DispatchTime.now().uptimeNanoseconds
        let options = GenerationOptions(maxTokens: replyTokens, sampling: .greedy, stopAtEndOfGeneration: false)
        let label = shared ? "one owner" : "owner each"
        let requests = (0..<chats).map { k in
            let owner = shared ? "1000" : "\(1000 + k)"
            let messages = [
                ChatMessage(role: "system", content: system),
                ChatMessage(role: "user", content: "Question \(k): what does rule \(k % 13) mean for my deployment?"),
            ]
            return (owner: owner, messages: messages, newID: "\(owner):s-\(k)")
        }
        var reports: [TurnReport] = []
        if together {
            // Every request is placed before any turn runs, then the scheduler runs them.
            let ids = requests.map {
                engine.sessionForRequest(named: nil, messages: $0.messages, owner: $0.owner, newID: $0.newID)
            }
            let scheduler = TurnScheduler(engine: engine)
            let done = ReportList()
            for (id, r) in zip(ids, requests) {
                scheduler.submit(.init(session: id, owner: r.owner, messages: r.messages, options: options)) {
                    engine.requestEnded(session: id)
                    done.append($0, label: label, of: requests.count)
                }
            }
            scheduler.drain()
            reports = try done.reports()
        } else {
            for (k, r) in requests.enumerated() {
                let id = engine.sessionForRequest(named: nil, messages: r.messages, owner: r.owner, newID: r.newID)
                defer { engine.requestEnded(session: id) }
                reports.append(try engine.runTurn(session: id, owner: r.owner, messages: r.messages, options: options))
                FileHandle.standardError.write(Data("\r\(label): chat \(k + 1)/\(chats)".utf8))
            }
        }
        FileHandle.standardError.write(Data("\n".utf8))
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        let computed = reports.reduce(0) { $0 + $1.tokensRecomputed + $1.tokensGenerated }
        let reused = reports.reduce(0) { $0 + $1.tokensReused }
        engine.quiesce()
        try store.flush()
        let s = store.stats
        let blocks = store.sessions.reduce(0) { $0 + (store.blockKeys(session: $1)[0]?.count ?? 0) }
        return Outcome(
            owners: shared ? "one owner" : "owner each", together: together, chats: chats, systemTokens: systemTokens,
            hbmBytes: s.hbm.usedBytes, dramBytes: s.dram.usedBytes, diskBytes: s.disk.usedBytes,
            blocksPerLayer: blocks, tokensComputed: computed, tokensReused: reused, seconds: seconds)
    }
}

/// Turn results as the scheduler's completions deliver them (on turn threads).
private final class ReportList: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [Result<TurnReport, Error>] = []  // guarded by `lock`

    func append(_ r: Result<TurnReport, Error>, label: String, of total: Int) {
        let n = lock.withLock {
            results.append(r)
            return results.count
        }
        FileHandle.standardError.write(Data("\r\(label): chat \(n)/\(total)".utf8))
    }

    func reports() throws -> [TurnReport] { try lock.withLock { try results.map { try $0.get() } } }
}
