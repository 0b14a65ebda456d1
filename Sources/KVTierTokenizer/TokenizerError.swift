/// A tokenizer specification that cannot be used, with what is wrong and how to fix it.
public struct TokenizerError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What went wrong.
    public enum Kind: Sendable, Equatable {
        /// `tokenizer.ggml.model` is not `"gpt2"`.
        case unsupportedModel(String)
        /// `tokenizer.ggml.pre` names a pre-tokenizer this implementation does not have.
        case unsupportedPreTokenizer(String)
        /// The token list is empty.
        case emptyVocabulary
        /// The token-type list is shorter than the token list.
        case tokenTypeCountMismatch(tokens: Int, types: Int)
        /// A merge rule is not of the form `"left right"`.
        case badMerge(index: Int, line: String)
        /// A special-token id (BOS, EOS, ...) is outside the vocabulary.
        case tokenIDOutOfRange(name: String, id: Int32, vocabularySize: Int)
        /// BOS or EOS is to be added but its id is not given.
        case missingSpecialToken(name: String)
    }

    /// What went wrong.
    public let kind: Kind

    /// Creates an error of the given kind.
    public init(_ kind: Kind) {
        self.kind = kind
    }

    /// A sentence that says what is wrong and what to do about it.
    public var description: String {
        switch kind {
        case .unsupportedModel(let name):
            return "tokenizer model '\(name)' is not supported: only byte-level BPE ('gpt2') is; "
                + "use a model whose tokenizer.ggml.model is 'gpt2'"
        case .unsupportedPreTokenizer(let name):
            return "pre-tokenizer '\(name)' is not supported; supported are 'smollm', 'gpt2' ('gpt-2'), "
                + "'llama-bpe' ('llama3', 'llama-v3') and 'default'; check tokenizer.ggml.pre"
        case .emptyVocabulary:
            return "the vocabulary is empty; tokenizer.ggml.tokens must list at least one token"
        case .tokenTypeCountMismatch(let tokens, let types):
            return "there are \(types) token types for \(tokens) tokens; tokenizer.ggml.token_type "
                + "must have one entry per token, or be left empty"
        case .badMerge(let index, let line):
            return "merge rule \(index) ('\(line)') is not of the form 'left right'; "
                + "check tokenizer.ggml.merges"
        case .tokenIDOutOfRange(let name, let id, let size):
            return "\(name) token id \(id) is outside the vocabulary of \(size) tokens; "
                + "fix or drop the \(name) id"
        case .missingSpecialToken(let name):
            return "\(name) is to be added to every encoding but no \(name) token id is given; "
                + "set the \(name) id or turn adding it off"
        }
    }
}
