/// A `POST /v1/completions` body (OpenAI's legacy text completion): a `prompt` continued as
/// plain text, without the chat template. The fields it shares with chat completions are
/// decoded and checked by `ChatCompletionRequest.common`; what kvtierd cannot honour here is
/// refused with the field's name.
struct TextCompletionRequest: Decodable {
    typealias Key = ChatCompletionRequest.Key
    typealias FieldError = ChatCompletionRequest.FieldError

    let prompt: String
    let common: ChatCompletionRequest.Common

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        func present(_ key: String) throws -> Bool {
            guard c.contains(Key(key)) else { return false }
            return try !c.decodeNil(forKey: Key(key))
        }
        if try present("best_of") {
            let n = try c.decode(Int.self, forKey: Key("best_of"))
            guard n == 1 else {
                throw FieldError(path: "best_of", message: "not supported (no server-side ranking); ask for n choices")
            }
        }
        if try present("echo"), try c.decode(Bool.self, forKey: Key("echo")) {
            throw FieldError(path: "echo", message: "not supported; the prompt is what you sent")
        }
        if try present("suffix"), try !c.decode(String.self, forKey: Key("suffix")).isEmpty {
            throw FieldError(path: "suffix", message: "not supported (no fill-in-the-middle); leave it out")
        }
        if try present("logprobs") {
            throw FieldError(
                path: "logprobs", message: "not supported on /v1/completions; /v1/chat/completions serves logprobs")
        }
        guard c.contains(Key("prompt")) else {
            throw FieldError(path: "prompt", message: "missing: the text to continue")
        }
        if let text = try? c.decode(String.self, forKey: Key("prompt")) {
            prompt = text
        } else if let list = try? c.decode([String].self, forKey: Key("prompt")) {
            guard list.count == 1 else {
                throw FieldError(path: "prompt", message: "one prompt per request, got \(list.count)")
            }
            prompt = list[0]
        } else {
            throw FieldError(path: "prompt", message: "expected a string (token arrays are not accepted; send text)")
        }
        guard !prompt.isEmpty else { throw FieldError(path: "prompt", message: "must not be empty") }
        // OpenAI's default for this endpoint.
        common = try ChatCompletionRequest.common(c, defaultMaxTokens: 16)
    }
}
