import ArgumentParser
import Dispatch
import Foundation
import KVTierEngine
import KVTierModel

/// CachedAttention's truncation experiment on ShareGPT chats: perplexity of the last assistant
/// reply (teacher-forced) when the history before it is truncated to fit a window of W tokens,
/// by four methods: (a) full history, no truncation (reference); (b) truncate the token history,
/// then recompute the kept tokens from scratch at positions 0..k-1; (c) position-decoupled
/// truncation: keep the full-context prefill's pre-RoPE K/V of the kept tokens and give them
/// new contiguous positions; (d) naive truncation: the same kept K/V at their old positions,
/// the target continuing at its old positions. Plus (e), the paper's naive variant: kept K/V
/// at their old positions, the target at the new contiguous positions k.. (what a cache that
/// baked RoPE into its keys and counts positions by its length would do). Each with 0 and S
/// sink tokens.
///
/// Layout of one conversation: context = the template-rendered history up to and including the
/// header `<|im_start|>assistant\n` of the last assistant reply; target = the first
/// `--target-tokens` tokens of that reply. The caches hold the context minus its last token;
/// the scoring pass runs that last token followed by the target (less its last token), so its
/// row i predicts target token i. A window W keeps k = W - m context tokens (m = target length):
/// the first S, and the last k - S.
struct TruncationBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "truncation", abstract: "Perplexity after context truncation: recompute vs position-decoupled vs naive.")

    @Option(name: .long, help: "GGUF model file (default: $KVTIER_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?
    @Option(help: "ShareGPT JSON (`make data` fetches it).") var data = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
    @Option(help: "Windows W in tokens (comma-separated).") var windows = "256,512"
    @Option(help: "Sink token counts S (comma-separated).") var sinks = "0,4"
    @Option(help: "Conversations to evaluate (each must have a context longer than the largest window).")
    var conversations = 40
    @Option(help: "Seed of the conversation selection.") var seed: UInt64 = 1
    @Option(help: "Evaluate exactly these conversation ids (comma-separated), in this order, instead of a seeded selection.")
    var ids: String?
    @Option(help: "Each message is cut to this many tokens.") var messageTokens = 120
    @Option(help: "The target (last assistant reply) is cut to this many tokens.") var targetTokens = 64
    @Option(help: "Replies with fewer tokens than this are not used as targets.") var minTargetTokens = 16
    @Option(help: "User turns required before the target.") var minUserTurns = 4
    @Option(help: "Threads.") var threads = 2
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let t0 = DispatchTime.now().uptimeNanoseconds
        let windowList = parseInts(windows), sinkList = parseInts(sinks)
        guard !windowList.isEmpty, !sinkList.isEmpty else { throw ValidationError("--windows and --sinks need at least one value") }
        let maxWindow = windowList.max()!
        for w in windowList {
            for s in sinkList where w - targetTokens < s + 2 {
                throw ValidationError("window \(w) leaves no room for \(s) sinks and a \(targetTokens)-token target")
            }
        }
        let path = ModelLocator.resolve(flag: model)
        let m: LlamaModel
        do { m = try LlamaModel(path: path) } catch { throw ValidationError("\(error)") }

        // 1. Candidates: records whose last assistant reply follows at least `minUserTurns` user turns.
        log("reading \(data) ...")
        let reader: ShareGPTReader
        do { reader = try ShareGPTReader(path: data) } catch { throw TruncationBenchError(description: "\(error) (run `make data`)") }
        var candidates: [Candidate] = []
        let wanted = ids.map { Set($0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }) }
        while let record = try reader.next() {
            if let wanted, !wanted.contains(record.id) { continue }
            if let c = Candidate(record, minUserTurns: minUserTurns) { candidates.append(c) }
            if reader.recordsRead % 5000 == 0 { log("  \(reader.recordsRead) records, \(candidates.count) candidates") }
        }
        log(
            "read \(reader.recordsRead) records (\(reader.skippedRecords) malformed skipped, truncated tail: \(reader.truncatedTail)); "
                + "\(candidates.count) with >= \(minUserTurns) user turns before an assistant reply")

        // 2. Order: seeded shuffle, or the order of --ids.
        if let ids {
            let order = ids.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            let byID = Dictionary(candidates.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
            candidates = order.compactMap { byID[$0] }
        } else {
            var rng = SplitMix64(seed: seed)
            if candidates.count > 1 {
                for i in stride(from: candidates.count - 1, to: 0, by: -1) {
                    let j = Int(rng.next() % UInt64(i + 1))
                    candidates.swapAt(i, j)
                }
            }
        }

        // 3. Tokenize in that order until enough conversations overflow the largest window.
        var samples: [Sample] = []
        var examined = 0, shortContext = 0, shortTarget = 0
        for c in candidates where samples.count < conversations {
            examined += 1
            let s = Sample(c, model: m, messageTokens: messageTokens, targetTokens: targetTokens)
            if s.target.count < minTargetTokens {
                shortTarget += 1
            } else if s.context.count <= maxWindow {
                shortContext += 1
            } else {
                samples.append(s)
            }
        }
        guard !samples.isEmpty else { throw TruncationBenchError(description: "no conversation qualifies") }
        if samples.count < conversations { log("warning: only \(samples.count) conversations qualify") }
        log("selected \(samples.count) conversations (examined \(examined): \(shortContext) too short, \(shortTarget) with a short target)")

        // 4. Evaluate.
        let transformer = m.makeTransformer(threads: threads)
        var results: [ConversationResult] = []
        for (n, s) in samples.enumerated() {
            let r = try evaluate(s, transformer: transformer, layout: m.kvLayout, windows: windowList, sinks: sinkList)
            results.append(r)
            let cells = r.truncated.map {
                "W\($0.window)/S\($0.sinks) b \(fmt(exp($0.recompute_nll))) c \(fmt(exp($0.decoupled_nll))) d \(fmt(exp($0.naive_nll))) e \(fmt(exp($0.naive_new_positions_nll)))"
            }
            log("[\(n + 1)/\(samples.count)] \(s.id) ctx \(s.context.count) tgt \(s.target.count): full \(fmt(exp(r.full_nll))); " + cells.joined(separator: "; "))
        }

        // 5. Summaries.
        var summary: [SummaryRow] = []
        func row(_ window: Int?, _ sinks: Int?, _ method: String, _ nlls: [Double]) {
            let ppl = nlls.map { exp($0) }
            summary.append(
                SummaryRow(
                    window: window, sinks: sinks, method: method, mean_ppl: ppl.reduce(0, +) / Double(ppl.count),
                    median_ppl: median(ppl), ppl_of_mean_nll: exp(nlls.reduce(0, +) / Double(nlls.count)),
                    mean_nll: nlls.reduce(0, +) / Double(nlls.count)))
        }
        row(nil, nil, "full", results.map(\.full_nll))
        for w in windowList {
            for sk in sinkList {
                let cells = results.map { $0.truncated.first { $0.window == w && $0.sinks == sk }! }
                row(w, sk, "recompute", cells.map(\.recompute_nll))
                row(w, sk, "decoupled", cells.map(\.decoupled_nll))
                row(w, sk, "naive", cells.map(\.naive_nll))
                row(w, sk, "naive_new_positions", cells.map(\.naive_new_positions_nll))
            }
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        let worstKeyDiff = results.flatMap { $0.truncated.map(\.layer0_key_max_abs_diff) }.max() ?? 0

        if json {
            struct Selection: Encodable {
                let records_read: Int; let records_skipped: Int; let truncated_tail: Bool; let candidates: Int
                let examined: Int; let rejected_short_context: Int; let rejected_short_target: Int
            }
            struct Out: Encodable {
                let benchmark: String; let model: String; let data: String; let seed: UInt64; let threads: Int
                let windows: [Int]; let sinks: [Int]; let message_tokens: Int; let target_tokens: Int
                let min_user_turns: Int; let selection: Selection; let ids: [String]
                let summary: [SummaryRow]; let conversations: [ConversationResult]
                let layer0_key_max_abs_diff: Float; let seconds: Double
            }
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let out = Out(
                benchmark: "truncation", model: path, data: data, seed: seed, threads: threads, windows: windowList, sinks: sinkList,
                message_tokens: messageTokens, target_tokens: targetTokens, min_user_turns: minUserTurns,
                selection: Selection(
                    records_read: reader.recordsRead, records_skipped: reader.skippedRecords, truncated_tail: reader.truncatedTail,
                    candidates: candidates.count, examined: examined, rejected_short_context: shortContext,
                    rejected_short_target: shortTarget),
                ids: samples.map(\.id), summary: summary, conversations: results, layer0_key_max_abs_diff: worstKeyDiff,
                seconds: seconds)
            print(String(decoding: try enc.encode(out), as: UTF8.self))
        } else {
            let full = summary[0]
            print("\(samples.count) conversations, context \(samples.map(\.context.count).min()!)-\(samples.map(\.context.count).max()!) tokens; mean target PPL (median)")
            print("full history (no truncation): \(fmt(full.mean_ppl)) (\(fmt(full.median_ppl)))")
            print("| W | S | (b) recompute | (c) decoupled (ours) | (d) naive, old positions | (e) naive, target at new positions |")
            print("|---:|---:|---:|---:|---:|---:|")
            for w in windowList {
                for sk in sinkList {
                    let cell = { (method: String) -> String in
                        let r = summary.first { $0.window == w && $0.sinks == sk && $0.method == method }!
                        return "\(fmt(r.mean_ppl)) (\(fmt(r.median_ppl)))"
                    }
                    print("| \(w) | \(sk) | \(cell("recompute")) | \(cell("decoupled")) | \(cell("naive")) | \(cell("naive_new_positions")) |")
                }
            }
            print("ids: \(samples.map(\.id).joined(separator: ","))")
            print("layer-0 keys, recompute vs decoupled, max |diff|: \(worstKeyDiff); \(String(format: "%.0f", seconds)) s")
        }
    }

    // MARK: Evaluation

    private func evaluate(
        _ s: Sample, transformer: Transformer, layout: KVLayout, windows: [Int], sinks: [Int]
    ) throws -> ConversationResult {
        let ctx = s.context, tgt = s.target
        let L = ctx.count, n = tgt.count
        // The scoring pass: the last context token, then the target but its last token.
        let scoreTokens = [ctx[L - 1]] + tgt.dropLast()
        func score(_ cache: InMemoryKVCache, firstPosition: Int) throws -> Double {
            let before = cache.count
            var nll = 0.0
            try transformer.forward(
                tokens: scoreTokens, positions: (0..<n).map { Int32(firstPosition + $0) }, cache: cache, logits: .all
            ) { i, logits in
                nll += negativeLogLikelihood(logits, target: Int(tgt[i]))
            }
            cache.truncate(to: before)
            return nll / Double(n)
        }

        // (a) Full history: prefill the whole context (less its last token) once.
        let big = InMemoryKVCache(layout: layout, capacity: L - 1 + n)
        try transformer.forward(tokens: Array(ctx[..<(L - 1)]), positions: (0..<(L - 1)).map { Int32($0) }, cache: big, logits: .none)
        let full = try score(big, firstPosition: L - 1)

        var cells: [TruncationResult] = []
        for w in windows {
            let k = w - n  // context tokens kept, the last one included (it runs in the scoring pass)
            for sk in sinks {
                let tail = k - 1 - sk
                let ranges = [0..<sk, (L - 1 - tail)..<(L - 1)]
                let newPositions = (0..<(k - 1)).map { Int32($0) }
                // (b) Truncate the tokens, recompute the kept ones at 0..k-2.
                let rec = InMemoryKVCache(layout: layout, capacity: k - 1 + n)
                try transformer.forward(tokens: ranges.flatMap { ctx[$0] }, positions: newPositions, cache: rec, logits: .none)
                let recompute = try score(rec, firstPosition: k - 1)
                // (c) Ours: the full prefill's kept K/V, re-positioned to 0..k-2.
                let ours = InMemoryKVCache(layout: layout, capacity: k - 1 + n)
                try ours.copySlots(from: big, ranges: ranges, positions: newPositions)
                let decoupled = try score(ours, firstPosition: k - 1)
                // (d) Naive: the same K/V at their old positions; the target at its old positions.
                let naive = InMemoryKVCache(layout: layout, capacity: k - 1 + n)
                try naive.copySlots(from: big, ranges: ranges, positions: nil)
                let naiveOld = try score(naive, firstPosition: L - 1)
                // (e) Paper's naive: K/V at old positions, the target at the new positions k-1...
                let naiveNew = try score(naive, firstPosition: k - 1)
                cells.append(
                    TruncationResult(
                        window: w, sinks: sk, kept: k, recompute_nll: recompute, decoupled_nll: decoupled, naive_nll: naiveOld,
                        naive_new_positions_nll: naiveNew, layer0_key_max_abs_diff: layer0KeyDiff(rec, ours)))
            }
        }
        return ConversationResult(id: s.id, context_tokens: L, target_tokens: n, full_nll: full, truncated: cells)
    }

    /// Largest |difference| between two caches' layer-0 keys. Layer 0's pre-RoPE keys depend only
    /// on the token, so recomputation and copying must agree up to rounding.
    private func layer0KeyDiff(_ a: InMemoryKVCache, _ b: InMemoryKVCache) -> Float {
        precondition(a.count == b.count)
        return a.withLayer(0) { va in
            b.withLayer(0) { vb in
                var worst: Float = 0
                for i in 0..<(a.count * a.layout.rowWidth) {
                    let x = Float(Float16(bitPattern: va.runs[0].keys.load(fromByteOffset: 2 * i, as: UInt16.self)))
                    let y = Float(Float16(bitPattern: vb.runs[0].keys.load(fromByteOffset: 2 * i, as: UInt16.self)))
                    worst = max(worst, abs(x - y))
                }
                return worst
            }
        }
    }

    private func log(_ s: String) {
        FileHandle.standardError.write(Data((s + "\n").utf8))
    }

    private func parseInts(_ s: String) -> [Int] {
        s.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    }

    private func fmt(_ x: Double) -> String { String(format: "%.2f", x) }
}

// MARK: Data

/// A record usable for the study: its messages up to and including its last assistant reply,
/// with roles mapped to ChatML (human/user -> user; gpt/chatgpt/bing/assistant -> assistant; system).
private struct Candidate {
    let id: String
    let messages: [ChatMessage]

    init?(_ record: ShareGPTConversation, minUserTurns: Int) {
        var mapped: [ChatMessage] = []
        for msg in record.conversations {
            let role: String
            switch msg.from {
            case "human", "user": role = "user"
            case "gpt", "chatgpt", "bing", "assistant": role = "assistant"
            case "system": role = "system"
            default: return nil
            }
            mapped.append(ChatMessage(role: role, content: msg.value))
        }
        guard let last = mapped.lastIndex(where: { $0.role == "assistant" }) else { return nil }
        let history = mapped[..<last]
        guard history.filter({ $0.role == "user" }).count >= minUserTurns else { return nil }
        id = record.id
        messages = Array(mapped[...last])
    }
}

/// Token ids of one conversation. Each message's content is tokenized, cut to `messageTokens`
/// ids and decoded back to text; the history is rendered with the model's chat template (which
/// adds its default system message) up to the assistant header and tokenized as a whole. The
/// target is the first `targetTokens` ids of the last reply's content (tokenized alone; it
/// follows "\n", a pre-tokenizer boundary).
private struct Sample {
    let id: String
    let context: [Int32]
    let target: [Int32]

    init(_ c: Candidate, model: LlamaModel, messageTokens: Int, targetTokens: Int) {
        let tok = model.tokenizer
        let history = c.messages.dropLast().map { msg in
            let ids = tok.encode(msg.content, addSpecial: false, parseSpecial: false)
            return ChatMessage(role: msg.role, content: ids.count > messageTokens ? tok.decode(Array(ids.prefix(messageTokens))) : msg.content)
        }
        id = c.id
        context = tok.encode(model.template.render(Array(history), addGenerationPrompt: true), addSpecial: true, parseSpecial: true)
        target = Array(tok.encode(c.messages.last!.content, addSpecial: false, parseSpecial: false).prefix(targetTokens))
    }
}

private struct TruncationBenchError: Error, CustomStringConvertible {
    let description: String
}

private struct TruncationResult: Encodable {
    let window: Int; let sinks: Int; let kept: Int
    let recompute_nll: Double; let decoupled_nll: Double; let naive_nll: Double; let naive_new_positions_nll: Double
    let layer0_key_max_abs_diff: Float
}

private struct ConversationResult: Encodable {
    let id: String; let context_tokens: Int; let target_tokens: Int; let full_nll: Double
    let truncated: [TruncationResult]
}

private struct SummaryRow: Encodable {
    let window: Int?; let sinks: Int?; let method: String
    let mean_ppl: Double; let median_ppl: Double; let ppl_of_mean_nll: Double; let mean_nll: Double
}

/// -log softmax(logits)[target], in Double.
private func negativeLogLikelihood(_ logits: UnsafeBufferPointer<Float>, target: Int) -> Double {
    var mx = -Double.infinity
    for v in logits { mx = max(mx, Double(v)) }
    var s = 0.0
    for v in logits { s += exp(Double(v) - mx) }
    return -(Double(logits[target]) - mx - log(s))
}
