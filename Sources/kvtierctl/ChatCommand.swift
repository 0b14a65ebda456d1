import ArgumentParser
import Foundation
import KVTierEngine
import KVTierModel

struct LocalChatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat", abstract: "Chat with the model locally (no daemon); the KV of earlier turns is reused.")
    @OptionGroup var options: ModelOptions
    @Option(help: "Tokens per reply at most.") var maxTokens = 256
    @Option(help: "Sampling temperature (0 = greedy).") var temperature: Float = 0.7
    @Option(help: "Top-p filter.") var topP: Float = 0.9
    @Option(help: "Random seed.") var seed: UInt64 = 42

    func run() throws {
        let model = try loadModel(options)
        try LocalChat(model: model, threads: options.threads ?? LlamaModel.defaultThreads).run(
            options: GenerationOptions(
                maxTokens: maxTokens, sampling: SamplingParameters(temperature: temperature, topP: topP, seed: seed)))
    }
}
