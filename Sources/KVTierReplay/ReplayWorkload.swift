import Foundation
import KVTierEngine
import KVTierModel

/// The replayed chats: ShareGPT conversations cut to fit this machine, with Poisson session
/// arrivals and exponential think times drawn from one seed, so every policy replays the same
/// trace.
public struct ReplayWorkload: Encodable {
    public struct Turn: Encodable {
        /// The user message (cut to the message cap).
        public let user: String
        /// The recorded reply's ids (cut to the cap), fed teacher-forced.
        public let reply: [Int32]
        /// Its text, which the next turn sends back as the assistant message.
        public let replyText: String
        /// Seconds between this turn's reply and the next turn's arrival.
        public let thinkSeconds: Double

        public enum CodingKeys: String, CodingKey { case user, assistant, think_s }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(user, forKey: .user)
            try c.encode(replyText, forKey: .assistant)
            try c.encode(thinkSeconds, forKey: .think_s)
        }
    }

    public struct Conversation: Encodable {
        public let id: String
        public let session: String
        public let arrivalSeconds: Double
        public let turns: [Turn]

        public enum CodingKeys: String, CodingKey {
            case id, session
            case arrivalSeconds = "arrival_s"
            case turns
        }
    }

    public let conversations: [Conversation]

    public struct Parameters {
        public var sessions: Int
        public var seed: UInt64
        public var messageTokens: Int
        public var maxTurns: Int
        public var arrivalRate: Double
        public var thinkMeanSeconds: Double

        public init(
            sessions: Int, seed: UInt64, messageTokens: Int, maxTurns: Int, arrivalRate: Double,
            thinkMeanSeconds: Double
        ) {
            self.sessions = sessions
            self.seed = seed
            self.messageTokens = messageTokens
            self.maxTurns = maxTurns
            self.arrivalRate = arrivalRate
            self.thinkMeanSeconds = thinkMeanSeconds
        }
    }

    public init(conversations: [Conversation]) {
        self.conversations = conversations
    }

    /// Reads ShareGPT record by record (the file ends mid-record: the reader stops cleanly),
    /// keeps conversations with at least 2 user turns after dropping empty messages, shuffles
    /// them with the seed and takes the first `sessions`.
    public init(data: String, model: LlamaModel, parameters p: Parameters, log: (String) -> Void) throws {
        let reader: ShareGPTReader
        do { reader = try ShareGPTReader(path: data) } catch { throw ReplayError("\(error) (run `make data`)") }
        var candidates: [(id: String, pairs: [(String, String)])] = []
        while let record = try reader.next() {
            if let pairs = Self.userReplyPairs(record), pairs.count >= 2 { candidates.append((record.id, pairs)) }
        }
        log(
            "read \(reader.recordsRead) ShareGPT records (truncated tail: \(reader.truncatedTail)); "
                + "\(candidates.count) with >= 2 user turns"
        )
        var rng = SplitMix64(seed: p.seed)
        func unit() -> Double { Double(rng.next() >> 11) / Double(1 << 53) }
        for i in stride(from: candidates.count - 1, to: 0, by: -1) {
            candidates.swapAt(i, Int(rng.next() % UInt64(i + 1)))
        }
        guard candidates.count >= p.sessions else {
            throw ReplayError("only \(candidates.count) conversations qualify, \(p.sessions) wanted")
        }
        let tok = model.tokenizer
        func cut(_ text: String) -> (String, [Int32]) {
            let ids = tok.encode(text, addSpecial: false, parseSpecial: false)
            return ids.count > p.messageTokens
                ? (tok.decode(Array(ids.prefix(p.messageTokens))), Array(ids.prefix(p.messageTokens))) : (text, ids)
        }
        var clock = 0.0
        var out: [Conversation] = []
        for (n, c) in candidates.prefix(p.sessions).enumerated() {
            clock += -log1p(-unit()) / p.arrivalRate
            // The reply text is what the engine's teacher-forced reply decodes to, so the next turn
            // finds the reply's ids by it (its KV is reused, as for a generated reply).
            let turns = c.pairs.prefix(p.maxTurns).map { user, reply -> Turn in
                let ids = cut(reply).1
                return Turn(
                    user: cut(user).0, reply: ids, replyText: tok.decode(ids),
                    thinkSeconds: -log1p(-unit()) * p.thinkMeanSeconds)
            }
            out.append(
                Conversation(id: c.id, session: String(format: "r%04d", n + 1), arrivalSeconds: clock, turns: turns))
        }
        conversations = out
    }

    /// (user, reply) pairs in order: empty messages dropped, consecutive messages of one side
    /// joined, a trailing user message without a reply dropped. nil for records with other roles.
    public static func userReplyPairs(_ record: ShareGPTConversation) -> [(String, String)]? {
        var merged: [(role: String, text: String)] = []
        for m in record.conversations {
            let text = m.value.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !text.isEmpty else { continue }
            let role: String
            switch m.from {
            case "human", "user": role = "user"
            case "gpt", "chatgpt", "bing", "assistant": role = "assistant"
            default: return nil
            }
            if merged.last?.role == role {
                merged[merged.count - 1].text += "\n\n" + text
            } else {
                merged.append((role, text))
            }
        }
        if merged.first?.role == "assistant" { merged.removeFirst() }
        var pairs: [(String, String)] = []
        var i = 0
        while i + 1 < merged.count {
            pairs.append((merged[i].text, merged[i + 1].text))
            i += 2
        }
        return pairs
    }

    public var turnCount: Int { conversations.reduce(0) { $0 + $1.turns.count } }

    /// Messages of turn `k` of `c`: the history ending with user k, with the recorded (cut)
    /// replies, or with `reply(j)` as the assistant's j-th reply.
    public func messages(_ c: Conversation, upTo k: Int, reply: ((Int) -> String)? = nil) -> [ChatMessage] {
        var m: [ChatMessage] = []
        for j in 0..<k {
            m.append(ChatMessage(role: "user", content: c.turns[j].user))
            m.append(ChatMessage(role: "assistant", content: reply?(j) ?? c.turns[j].replyText))
        }
        m.append(ChatMessage(role: "user", content: c.turns[k].user))
        return m
    }
}

public struct ReplayError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
