import Foundation
import KVTierModel

/// A terminal chat: reads user lines, streams replies, and keeps the conversation's KV in one
/// in-memory cache so each turn prefills only its new tokens.
public struct LocalChat {
    let model: LlamaModel
    let generator: Generator

    public init(model: LlamaModel, threads: Int) {
        self.model = model
        self.generator = Generator(model: model, threads: threads)
    }

    public func run(options: GenerationOptions) throws {
        print("KVTier local chat (\(model.config.layerCount) layers, simd \(LlamaModel.simdLevel)). Empty line or Ctrl-D quits.")
        var first = true
        var lastStop = StopReason.endOfGeneration
        while true {
            FileHandle.standardOutput.write(Data("> ".utf8))
            guard let line = readLine(), !line.isEmpty else { break }
            // Each turn appends only its own messages; the cache holds everything before,
            // except the last sampled token, which goes first.
            var ids: [Int32] = []
            if first {
                ids = model.tokenizer.encode(
                    model.template.render([ChatMessage(role: "user", content: line)]), addSpecial: true, parseSpecial: true)
            } else {
                if let pending = generator.pendingToken { ids.append(pending) }
                var text = "\n<|im_start|>user\n\(line)<|im_end|>\n<|im_start|>assistant\n"
                if lastStop != .endOfGeneration { text = "<|im_end|>" + text }
                ids += model.tokenizer.encode(text, addSpecial: false, parseSpecial: true)
            }
            first = false
            let result = try generator.generate(prompt: ids, options: options) { piece in
                FileHandle.standardOutput.write(Data(piece.utf8))
            }
            print("")
            lastStop = result.stopReason
            FileHandle.standardError.write(Data(String(
                format: "[%d new prompt tokens, %d cached; first token %.0f ms]\n", ids.count,
                generator.cache.count - ids.count - result.generated.count, result.prefillSeconds * 1000).utf8))
            if result.stopReason == .contextFull {
                print("(context is full; start a new chat)")
                break
            }
        }
    }
}
