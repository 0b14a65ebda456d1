import KVTierEngine
import KVTierModel
import KVTierReplay

/// The replayed chats reduced to what the simulator needs: when each session arrives, and for
/// each turn its prompt and reply lengths in tokens and the think time after it.
public struct SimulatedTrace: Sendable {
    public struct Turn: Sendable, Equatable {
        /// The whole prompt (history, the new message, the template's tokens).
        public var promptTokens: Int
        public var replyTokens: Int
        public var thinkSeconds: Double

        public init(promptTokens: Int, replyTokens: Int, thinkSeconds: Double) {
            self.promptTokens = promptTokens
            self.replyTokens = replyTokens
            self.thinkSeconds = thinkSeconds
        }
    }

    public struct Session: Sendable, Equatable {
        public var name: String
        public var arrivalSeconds: Double
        public var turns: [Turn]

        public init(name: String, arrivalSeconds: Double, turns: [Turn]) {
            self.name = name
            self.arrivalSeconds = arrivalSeconds
            self.turns = turns
        }
    }

    public var sessions: [Session]
    /// Tokens every chat begins with (the template's default system prompt): the engine's prefix
    /// cache stores them once and every turn reuses them, whatever its own session still holds.
    public var sharedPrefixTokens: Int

    public init(sessions: [Session], sharedPrefixTokens: Int = 0) {
        self.sessions = sessions
        self.sharedPrefixTokens = sharedPrefixTokens
    }

    /// The replay's workload, each prompt tokenized with the model's chat template as the engine
    /// does (the same counts the replay's turns have).
    public init(workload: ReplayWorkload, model: LlamaModel) {
        let conversation = ConversationTokenizer(model: model)
        var common: [Int32]?
        for c in workload.conversations where !c.turns.isEmpty {
            let first = conversation.tokens(for: workload.messages(c, upTo: 0))
            common = common.map { Array(zip($0, first).prefix { $0.0 == $0.1 }.map(\.0)) } ?? first
        }
        sharedPrefixTokens = workload.conversations.count > 1 ? common?.count ?? 0 : 0
        sessions = workload.conversations.map { c in
            Session(
                name: c.session, arrivalSeconds: c.arrivalSeconds,
                turns: c.turns.indices.map { k in
                    Turn(
                        promptTokens: conversation.tokens(for: workload.messages(c, upTo: k)).count,
                        replyTokens: max(1, c.turns[k].reply.count), thinkSeconds: c.turns[k].thinkSeconds)
                })
        }
    }

    public var turnCount: Int { sessions.reduce(0) { $0 + $1.turns.count } }
}
