import Foundation
import KVTierModel

/// A chat on the terminal driven through the full engine: every turn resends the whole history,
/// the engine reuses the cached KV from its tiers, and a report line shows where it came from.
public struct TerminalChat {
    let engine: ChatEngine
    let session: String

    public init(engine: ChatEngine, session: String = "terminal") {
        self.engine = engine
        self.session = session
    }

    public func run(options: GenerationOptions) {
        print("KVTier chat (session '\(session)', \(engine.model.config.layerCount) layers, simd \(LlamaModel.simdLevel)). Empty line or Ctrl-D quits.")
        var messages: [ChatMessage] = []
        while true {
            FileHandle.standardOutput.write(Data("> ".utf8))
            guard let line = readLine(), !line.isEmpty else { break }
            messages.append(ChatMessage(role: "user", content: line))
            do {
                let r = try engine.runTurn(session: session, messages: messages, options: options) { piece in
                    FileHandle.standardOutput.write(Data(piece.utf8))
                }
                print("")
                messages.append(ChatMessage(role: "assistant", content: r.text))
                FileHandle.standardError.write(Data(String(
                    format: "[reused %d tokens (HBM %d, DRAM %d, disk %d), computed %d, generated %d; first token %.0f ms, load stall %.1f ms, save lag %.1f ms%@]\n",
                    r.tokensReused, r.hitsHBM, r.hitsDRAM, r.hitsDisk, r.tokensRecomputed, r.tokensGenerated, r.ttftMs,
                    r.loadStallMs, r.saveLagMs, r.truncatedTokens > 0 ? ", truncated \(r.truncatedTokens)" : "").utf8))
            } catch {
                FileHandle.standardError.write(Data("error: \(error)\n".utf8))
                messages.removeLast()
            }
        }
        engine.quiesce()
    }
}
