import ArgumentParser
import Dispatch
import Foundation
import KVTierAPI

/// `kvtierctl chat`: an interactive multi-turn chat with a running kvtierd. Each turn resends
/// the whole history (as an OpenAI client does), streams the reply and shows the turn's report.
/// On a terminal the prompt has line editing and a history kept across runs (libedit); Ctrl-C
/// during a reply cancels that turn (the connection closes, kvtierd stops the turn) and the
/// chat goes on without it. `--session ID` of a session kvtierd holds resumes its conversation.
struct DaemonChatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat with a running kvtierd over its socket (streaming, with each turn's KV report).")
    @OptionGroup var options: DaemonOptions
    @Option(help: "Session id: an existing one resumes its conversation (default: a new one).") var session: String?
    @Option(help: "Tokens per reply at most.") var maxTokens = 256
    @Option(help: "Sampling temperature (0 = greedy).") var temperature: Float = 0.7

    func run() async throws {
        let client = options.client
        let id = session ?? "cli-" + UUID().uuidString.prefix(8).lowercased()
        var history: [APIChatMessage] = []
        try await runAdmin {
            if session != nil {
                history = try await resumed(id, client: client)
            }
        }
        let input = LineInput()
        defer { input.close() }
        let interrupt = InterruptRouter()
        print(
            "kvtierctl chat, session \(id) on \(client.socketPath)"
                + (history.isEmpty ? "" : ", resumed with \(history.count) messages")
                + ". Ctrl-C stops a reply; an empty line or Ctrl-D quits.")
        while let line = input.read(prompt: "> "), !line.isEmpty {
            history.append(APIChatMessage(role: "user", content: line))
            let request = ChatRequest(
                messages: history, maxTokens: maxTokens, temperature: temperature, stream: true, sessionId: id)
            let turn = Task { try await stream(request, client: client) }
            interrupt.onInterrupt { turn.cancel() }
            let outcome = await turn.result
            interrupt.onInterrupt(nil)
            print("")
            switch outcome {
            case .success(let reply):
                history.append(APIChatMessage(role: "assistant", content: reply.text))
                if let r = reply.report { FileHandle.standardError.write(Data(Self.describe(r).utf8)) }
            case .failure(let error as DaemonClient.Failure) where error.kind == .notRunning:
                FileHandle.standardError.write(Data("kvtierctl: \(error.description)\n".utf8))
                throw ExitCode(error.kind.rawValue)
            case .failure(let error):
                // Cancelled (Ctrl-C) or refused: the turn is not part of the chat.
                let message =
                    error is CancellationError ? "reply stopped; the turn is left out of the chat" : "\(error)"
                FileHandle.standardError.write(Data("[\(message)]\n".utf8))
                history.removeLast()
            }
        }
    }

    /// The conversation kvtierd holds for session `id`, or none if it has no such session.
    private func resumed(_ id: String, client: DaemonClient) async throws -> [APIChatMessage] {
        do {
            return try await client.call(.GET, "/v1/sessions/" + pathComponent(id), as: SessionDetail.self).messages
        } catch let e as DaemonClient.Failure where e.kind == .notFound {
            return []
        }
    }

    struct Reply {
        var text = ""
        var report: KVTierReport?
    }

    /// One streamed turn: the reply's text printed as it comes, and the last event's report.
    private func stream(_ request: ChatRequest, client: DaemonClient) async throws -> Reply {
        var reply = Reply()
        var failure: String?
        let decoder = APIJSON.decoder()
        let (status, body) = try await client.stream(.POST, "/v1/chat/completions", body: try APIJSON.encode(request)) {
            data in
            guard data != "[DONE]" else { return }
            if let error = try? decoder.decode(ErrorBody.self, from: Data(data.utf8)) {
                failure = error.error.message
                return
            }
            guard let chunk = try? decoder.decode(ChatCompletionChunk.self, from: Data(data.utf8)) else { return }
            if let piece = chunk.choices.first?.delta.content {
                reply.text += piece
                FileHandle.standardOutput.write(Data(piece.utf8))
            }
            if let report = chunk.kvtier { reply.report = report }
        }
        try DaemonClient.check(status: status, body: body)
        if let failure { throw DaemonClient.Failure(description: failure, kind: .serverError) }
        return reply
    }

    static func describe(_ r: KVTierReport) -> String {
        String(
            format: "[reused %d (HBM %d, DRAM %d, disk %d), computed %d, generated %d; first token %.0f ms]\n",
            r.tokensReused, r.hits.hbm, r.hits.dram, r.hits.disk, r.tokensRecomputed, r.tokensGenerated, r.ttftMs)
    }
}

/// SIGINT for the chat: while a reply streams it runs the handler set (cancelling the turn);
/// otherwise it is ignored, so Ctrl-C never kills the chat. The handler lives on `queue`.
final class InterruptRouter: @unchecked Sendable {
    // Unchecked: `handler` is read and written only on `queue`.
    private let queue = DispatchQueue(label: "kvtierctl.sigint")
    private var handler: (@Sendable () -> Void)?
    private let source: DispatchSourceSignal

    init() {
        signal(SIGINT, SIG_IGN)
        source = DispatchSource.makeSignalSource(signal: SIGINT, queue: queue)
        source.setEventHandler { [unowned self] in handler?() }
        source.resume()
    }

    func onInterrupt(_ handler: (@Sendable () -> Void)?) { queue.sync { self.handler = handler } }

    deinit {
        source.cancel()
        signal(SIGINT, SIG_DFL)
    }
}
