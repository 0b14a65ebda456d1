/// `POST /v1/completions` (OpenAI's legacy text completion): the answer, or with `stream` one
/// `text_completion` object per piece of text, the last with the finish reason, usage, session
/// id and report.
public struct TextCompletion: Codable, Sendable, Equatable {
    public struct Choice: Codable, Sendable, Equatable {
        public var index: Int
        public var text: String
        /// Always null: per-token log probabilities are served by `/v1/chat/completions`.
        public var logprobs: Int?
        public var finishReason: String?

        public init(index: Int = 0, text: String, finishReason: String?) {
            self.index = index
            self.text = text
            self.finishReason = finishReason
        }
    }

    public var id: String
    public var object = "text_completion"
    public var created: Int
    public var model: String
    public var choices: [Choice]
    public var usage: Usage?
    public var sessionId: String?
    public var kvtier: KVTierReport?

    public init(
        id: String, created: Int, model: String, choices: [Choice], usage: Usage? = nil, sessionId: String? = nil,
        kvtier: KVTierReport? = nil
    ) {
        self.id = id
        self.created = created
        self.model = model
        self.choices = choices
        self.usage = usage
        self.sessionId = sessionId
        self.kvtier = kvtier
    }
}
