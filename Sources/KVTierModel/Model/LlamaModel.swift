import CKVTierKernels
import KVTierTokenizer

/// A loaded model: the mapped GGUF, its config, weights, tokenizer and chat template.
/// Immutable and shareable; create a `Transformer` per concurrent forward pass.
public final class LlamaModel: Sendable {
    public let file: GGUFFile
    public let config: LlamaConfig
    public let weights: LlamaWeights
    public let tokenizer: BPETokenizer
    public let template: ChatTemplate

    public init(path: String) throws(ModelLoadError) {
        let file: GGUFFile
        do {
            file = try GGUFFile(path: path)
            config = try LlamaConfig(gguf: file)
            weights = try LlamaWeights(file: file, config: config)
        } catch {
            throw ModelLoadError.gguf(error)
        }
        self.file = file
        do {
            tokenizer = try BPETokenizer(spec: LlamaModel.tokenizerSpec(file))
        } catch let e as TokenizerError {
            throw ModelLoadError.tokenizer(e)
        } catch let e as GGUFError {
            throw ModelLoadError.gguf(e)
        } catch {
            throw ModelLoadError.tokenizer(nil)
        }
        guard tokenizer.vocabularySize == config.vocabularySize else {
            throw ModelLoadError.gguf(
                .invalidValue(
                    offset: 0, what: "tokenizer has \(tokenizer.vocabularySize) tokens, model \(config.vocabularySize)")
            )
        }
        template = ChatTemplate(chatTemplateSource: file.metadata["tokenizer.chat_template"]?.stringValue)
    }

    static func tokenizerSpec(_ f: GGUFFile) throws -> TokenizerSpec {
        func optionalID(_ key: String) -> Int32? { f.metadata[key]?.intValue.flatMap { Int32(exactly: $0) } }
        let types = f.metadata["tokenizer.ggml.token_type"] != nil ? try f.intArray("tokenizer.ggml.token_type") : []
        return TokenizerSpec(
            model: try f.string("tokenizer.ggml.model"),
            pre: f.metadata["tokenizer.ggml.pre"]?.stringValue ?? "default",
            tokens: try f.stringArray("tokenizer.ggml.tokens"),
            tokenTypes: types.map { Int32(truncatingIfNeeded: $0) },
            merges: f.metadata["tokenizer.ggml.merges"] != nil ? try f.stringArray("tokenizer.ggml.merges") : [],
            bosID: optionalID("tokenizer.ggml.bos_token_id"),
            eosID: optionalID("tokenizer.ggml.eos_token_id"),
            unknownID: optionalID("tokenizer.ggml.unknown_token_id"),
            paddingID: optionalID("tokenizer.ggml.padding_token_id"),
            addBOS: f.metadata["tokenizer.ggml.add_bos_token"]?.boolValue ?? false,
            addEOS: f.metadata["tokenizer.ggml.add_eos_token"]?.boolValue ?? false
        )
    }

    /// The KV layout of this model.
    public var kvLayout: KVLayout {
        KVLayout(layers: config.layerCount, kvHeads: config.kvHeadCount, headDim: config.headDim)
    }

    /// A decoder over this model's weights.
    public func makeTransformer(threads: Int = LlamaModel.defaultThreads) -> Transformer {
        Transformer(config: config, weights: weights, threads: threads)
    }

    /// The SIMD level the kernels run at on this machine.
    public static var simdLevel: String { String(cString: kvt_cpu_level_name(kvt_cpu_level())) }

    /// The linear layers' kernels on this CPU: the quantized-activation path (AVX-512 VNNI
    /// integer dot products, every row computed on its own) or F32 activations.
    public static var linearKernels: String {
        kvt_q8_layout(Int32(GGMLType.q4_1.rawValue)) >= 0
            ? "quantized activations (AVX-512 VNNI; engine.activation_bits, default 16), batch-invariant"
            : "F32 activations (no AVX-512 VNNI)"
    }

    public static var defaultThreads: Int { max(1, System.activeProcessorCount) }
}

/// Why a model could not be loaded.
public enum ModelLoadError: Error, CustomStringConvertible, Sendable {
    case gguf(GGUFError)
    case tokenizer(TokenizerError?)

    public var description: String {
        switch self {
        case .gguf(let e): return e.description
        case .tokenizer(let e):
            return "cannot build the tokenizer from the GGUF metadata: \(e.map { "\($0)" } ?? "unknown error")"
        }
    }
}
