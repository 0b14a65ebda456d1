import ArgumentParser
import Foundation
import KVTierEngine
import KVTierModel
import KVTierTokenizer

struct ModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Run the model locally, without the daemon.",
        subcommands: [Info.self, Tokenize.self, Generate.self, Logits.self, Perplexity.self, LocalChatCommand.self]
    )
}

/// Loads the model named by the options, turning load errors into a message for the user.
func loadModel(_ options: ModelOptions) throws -> LlamaModel {
    let path = ModelLocator.resolve(flag: options.model)
    do {
        return try LlamaModel(path: path)
    } catch {
        throw CLIError("\(error)")
    }
}

/// Reads all of standard input as UTF-8 text.
func readStandardInput() -> String {
    let data = FileHandle.standardInput.readDataToEndOfFile()
    return String(decoding: data, as: UTF8.self)
}

struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    let data = try enc.encode(value)
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}

extension ModelCommand {
    struct Info: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the model's metadata and tensor table.")
        @OptionGroup var options: ModelOptions

        func run() throws {
            let path = ModelLocator.resolve(flag: options.model)
            let file: GGUFFile
            do { file = try GGUFFile(path: path) } catch { throw CLIError("\(error)") }
            print("file: \(path)")
            print(
                "gguf version: \(file.version), \(file.metadataKeys.count) metadata keys, "
                    + "\(file.tensors.count) tensors, alignment \(file.alignment)"
            )
            print("simd: \(LlamaModel.simdLevel)")
            print("openblas: \(OpenBLASCore.name)")
            print("kernels: \(LlamaModel.linearKernels)")
            print("\nmetadata:")
            for key in file.metadataKeys {
                print("  \(key) = \(file.metadata[key]?.summary ?? "")")
            }
            print("\ntensors:")
            for t in file.tensors {
                let dims = t.dims.map(String.init).joined(separator: " x ")
                let name = t.name.padding(toLength: 28, withPad: " ", startingAt: 0)
                let type = t.type.description.padding(toLength: 5, withPad: " ", startingAt: 0)
                print("  \(name) \(type) [\(dims)] \(t.byteCount) bytes @ \(t.fileOffset)")
            }
            if let c = try? LlamaConfig(gguf: file) {
                let layout = KVLayout(layers: c.layerCount, kvHeads: c.kvHeadCount, headDim: c.headDim)
                print("\nKV cache: \(layout.bytesPerToken) bytes per token (F16 keys and values)")
            }
        }
    }

    struct Tokenize: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Tokenize standard input (special tokens such as <|im_start|> are recognized).")
        @OptionGroup var options: ModelOptions
        @Flag(help: "Print a JSON array of ids.") var json = false
        @Flag(help: "Do not parse special tokens in the text.") var noSpecial = false

        func run() throws {
            let model = try loadModel(options)
            let ids = model.tokenizer.encode(readStandardInput(), addSpecial: true, parseSpecial: !noSpecial)
            if json {
                try printJSON(ids)
            } else {
                for id in ids {
                    let piece = String(decoding: model.tokenizer.pieceBytes(id, renderSpecial: true), as: UTF8.self)
                    print("\(id)\t\(piece.debugDescription)")
                }
            }
        }
    }

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Continue the prompt read from standard input.")
        @OptionGroup var options: ModelOptions
        @Option(help: "Tokens to generate.") var maxTokens = 128
        @Option(help: "Sampling temperature (0 = greedy).") var temperature: Float = 0
        @Option(help: "Top-k filter (0 = off).") var topK = 0
        @Option(help: "Top-p (nucleus) filter.") var topP: Float = 1
        @Option(help: "Repetition penalty (1 = off).") var repeatPenalty: Float = 1
        @Option(help: "Random seed.") var seed: UInt64 = 0
        @Flag(help: "Wrap the input in the chat template as a user message.") var chat = false
        @Flag(help: "Print a JSON object with ids, text and timings instead of streaming text.") var json = false

        func validate() throws {
            guard (1...1_000_000).contains(maxTokens) else { throw ValidationError("--max-tokens must be at least 1.") }
        }

        func run() throws {
            let model = try loadModel(options)
            let input = readStandardInput()
            let text = chat ? model.template.render([ChatMessage(role: "user", content: input)]) : input
            let prompt = model.tokenizer.encode(text, addSpecial: true, parseSpecial: true)
            let generator = Generator(model: model, threads: options.threads ?? LlamaModel.defaultThreads)
            let sampling = SamplingParameters(
                temperature: temperature, topK: topK, topP: topP, repetitionPenalty: repeatPenalty, seed: seed)
            let result: GenerationResult
            do {
                result = try generator.generate(
                    prompt: prompt, options: GenerationOptions(maxTokens: maxTokens, sampling: sampling)
                ) { piece in
                    if !json { FileHandle.standardOutput.write(Data(piece.utf8)) }
                }
            } catch {
                throw CLIError("\(error)")
            }
            let rss = ProcessStats.peakResidentBytes()
            if json {
                struct Out: Encodable {
                    let prompt_ids: [Int32], generated_ids: [Int32], text: String, stop: String
                    let prefill_seconds: Double, decode_seconds: Double, peak_rss_bytes: Int
                }
                try printJSON(
                    Out(
                        prompt_ids: prompt, generated_ids: result.generated, text: result.text,
                        stop: result.stopReason.rawValue,
                        prefill_seconds: result.prefillSeconds, decode_seconds: result.decodeSeconds,
                        peak_rss_bytes: rss))
            } else {
                print("")
                let decodeRate =
                    result.generated.count > 1 ? Double(result.generated.count - 1) / result.decodeSeconds : 0
                FileHandle.standardError.write(
                    Data(
                        String(
                            format: "[%d prompt tokens, %d generated (%@); prefill %.3f s, decode %.1f tok/s; "
                                + "peak RSS %.1f MB]\n",
                            prompt.count, result.generated.count, result.stopReason.rawValue, result.prefillSeconds,
                            decodeRate,
                            Double(rss) / 1e6
                        ).utf8))
            }
        }
    }

    struct Logits: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the top-K logits at the last position of the prompt on standard input.")
        @OptionGroup var options: ModelOptions
        @Option(help: "How many logits.") var top = 10

        func validate() throws {
            guard top >= 1 else { throw ValidationError("--top must be at least 1.") }
        }

        func run() throws {
            let model = try loadModel(options)
            let ids = model.tokenizer.encode(readStandardInput(), addSpecial: true, parseSpecial: true)
            guard !ids.isEmpty else { throw CLIError("the prompt is empty") }
            let transformer = model.makeTransformer(threads: options.threads ?? LlamaModel.defaultThreads)
            let cache = InMemoryKVCache(layout: model.kvLayout, capacity: ids.count)
            var top: [(Int32, Float)] = []
            let k = self.top
            do {
                try transformer.forward(
                    tokens: ids, positions: (0..<ids.count).map { Int32($0) }, cache: cache, logits: .last
                ) { _, logits in
                    top = logits.enumerated().sorted { $0.element > $1.element }.prefix(k).map {
                        (Int32($0.offset), $0.element)
                    }
                }
            } catch {
                throw CLIError("\(error)")
            }
            struct Entry: Encodable {
                let id: Int32
                let logit: Float
                let piece: String
            }
            struct Out: Encodable {
                let n_tokens: Int
                let top: [Entry]
            }
            try printJSON(
                Out(
                    n_tokens: ids.count,
                    top: top.map {
                        Entry(
                            id: $0.0, logit: $0.1,
                            piece: String(
                                decoding: model.tokenizer.pieceBytes($0.0, renderSpecial: true), as: UTF8.self))
                    }))
        }
    }

    struct Perplexity: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Negative log-likelihood and perplexity of the text on standard input.")
        @OptionGroup var options: ModelOptions
        @Option(help: "Score at most this many tokens (default: the model's context).") var maxTokens: Int?

        func run() throws {
            let model = try loadModel(options)
            var ids = model.tokenizer.encode(readStandardInput(), addSpecial: true, parseSpecial: true)
            let limit = min(maxTokens ?? model.config.contextLength, model.config.contextLength)
            if ids.count > limit { ids = Array(ids.prefix(limit)) }
            guard ids.count >= 2 else { throw CLIError("need at least 2 tokens of text to score") }
            let transformer = model.makeTransformer(threads: options.threads ?? LlamaModel.defaultThreads)
            let cache = InMemoryKVCache(layout: model.kvLayout, capacity: ids.count)
            var nll = 0.0
            do {
                try transformer.forward(
                    tokens: ids, positions: (0..<ids.count).map { Int32($0) }, cache: cache, logits: .all
                ) { i, logits in
                    guard i + 1 < ids.count else { return }
                    nll += negativeLogLikelihood(logits, target: Int(ids[i + 1]))
                }
            } catch {
                throw CLIError("\(error)")
            }
            let n = ids.count - 1
            struct Out: Encodable {
                let tokens: Int
                let nll: Double
                let mean_nll: Double
                let perplexity: Double
            }
            try printJSON(Out(tokens: n, nll: nll, mean_nll: nll / Double(n), perplexity: exp(nll / Double(n))))
        }
    }
}

/// -log softmax(logits)[target], computed stably in Double.
func negativeLogLikelihood(_ logits: UnsafeBufferPointer<Float>, target: Int) -> Double {
    var m = -Double.infinity
    for v in logits { m = max(m, Double(v)) }
    var s = 0.0
    for v in logits { s += exp(Double(v) - m) }
    return -(Double(logits[target]) - m - log(s))
}
