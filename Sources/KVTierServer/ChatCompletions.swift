import Dispatch
import Foundation
import KVTierAPI
import KVTierEngine
import KVTierModel
import NIOConcurrencyHelpers

/// `POST /v1/chat/completions` and `POST /v1/completions` (a text completion: the prompt
/// continued without the chat template, answered as `text_completion` objects): validation
/// (`ValidatedChatRequest`), the session it belongs to, and the turn queued on the scheduler;
/// runs on `APIService.requests`, the turn's completion on the turn's thread.
extension APIService {
    func chatCompletion(_ r: Request, stream: StreamSink, respond: @escaping @Sendable (Response) -> Void) throws {
        let limits = self.limits.withLockedValue { $0 }
        let valid =
            r.path == "/v1/completions"
            ? try ValidatedChatRequest(
                textCompletionBody: r.body, sessionHeader: r.headers["x-session-id"], limits: limits)
            : try ValidatedChatRequest(body: r.body, sessionHeader: r.headers["x-session-id"], limits: limits)
        let messages = valid.messages
        if stopping.withLockedValue({ $0 }) {
            throw APIError(503, "unavailable", "kvtierd is shutting down; retry after it restarts", retryAfter: 5)
        }
        let depth = scheduler.depth
        guard depth < limits.maxQueue else {
            let retry = max(1, Int((Double(depth + 1) * turnSeconds.withLockedValue { $0 }).rounded(.up)))
            throw APIError(
                429, "rate_limit_exceeded",
                "\(depth) turns are waiting (server.max_queue = \(limits.maxQueue)); retry in \(retry) s",
                retryAfter: retry)
        }
        let mine = scheduler.outstanding(owner: r.peer.namespace)
        guard mine < limits.maxTurnsPerUser else {
            let batch = max(1, scheduler.maxRunning)
            let retry = max(
                1,
                Int(
                    (Double(mine - limits.maxTurnsPerUser + 1) * turnSeconds.withLockedValue { $0 } / Double(batch))
                        .rounded(.up)))
            throw APIError(
                429, "rate_limit_exceeded",
                "you have \(mine) turns queued or running (server.max_turns_per_user = \(limits.maxTurnsPerUser)); "
                    + "retry in \(retry) s",
                retryAfter: retry)
        }

        // Session: an explicit id (in the caller's namespace), else the caller's anonymous chat
        // this request extends, else a new anonymous one; either way a new session starts from
        // the caller's chat sharing the longest prefix (the engine's prefix cache).
        let stored = engine.sessionForRequest(
            named: valid.sessionID.map { access.storedID($0, for: r.peer) }, messages: messages,
            owner: r.peer.namespace, newID: access.storedID("s-" + UUID().uuidString.lowercased(), for: r.peer))
        let engine = self.engine
        let ended: @Sendable () -> Void = { engine.requestEnded(session: stored) }
        let visible = access.visibleID(stored, for: r.peer)
        let text = valid.isTextCompletion
        let id = (text ? "cmpl-" : "chatcmpl-") + UUID().uuidString.lowercased()
        let created = Int(Date().timeIntervalSince1970)
        var options = GenerationOptions(
            maxTokens: valid.maxTokens, sampling: valid.sampling, stopAtEndOfGeneration: !valid.ignoreEndOfGeneration,
            stopSequences: valid.stopSequences,
            isCancelled: { [isClientGone = r.isClientGone] in isClientGone() })
        options.logprobs = valid.logprobs
        // Streaming: the log probabilities of each piece arrive just before it (on the turn's
        // thread) and ride in its chunk; any left at the end ride in the last chunk.
        let piecesLogprobs = NIOLockedValueBox<[TokenLogprob]>([])
        if valid.stream && valid.logprobs != nil {
            options.onLogprobs = { lp in piecesLogprobs.withLockedValue { $0 += lp } }
        }
        let takeLogprobs: @Sendable () -> ChoiceLogprobs? = {
            guard valid.logprobs != nil else { return nil }
            return ChoiceLogprobs(
                piecesLogprobs.withLockedValue { all in
                    defer { all = [] }
                    return all
                })
        }
        let modelName = self.modelName
        let metrics = self.metrics
        let turnSeconds = self.turnSeconds

        let finished: @Sendable (TurnReport) -> Void = { report in
            ended()
            metrics.record(report)
            turnSeconds.withLockedValue { $0 = 0.8 * $0 + 0.2 * report.totalMs / 1000 }
        }
        let failed: @Sendable (Error) -> Void = { error in
            ended()
            switch error as? EngineError {
            case .clientGone?, .cancelledDuringPrompt?: metrics.recordCancelledBeforeReply()
            default: break
            }
        }
        let usage: @Sendable (TurnReport) -> Usage = {
            Usage(promptTokens: $0.promptTokens, completionTokens: $0.tokensGenerated)
        }
        guard valid.stream else {
            let turn = TurnScheduler.Turn(
                session: stored, owner: r.peer.namespace, messages: messages, options: options,
                nextTurnInSeconds: valid.nextTurnInSeconds)
            scheduler.submit(turn) { [self] result in
                switch result {
                case .success(let report):
                    finished(report)
                    let response: Response?
                    if text {
                        response = try? json(
                            200,
                            TextCompletion(
                                id: id, created: created, model: modelName,
                                choices: [.init(text: report.text, finishReason: report.stopReason)],
                                usage: usage(report), sessionId: visible, kvtier: KVTierReport(report)))
                    } else {
                        response = try? json(
                            200,
                            ChatCompletion(
                                id: id, created: created, model: modelName,
                                choices: [
                                    .init(
                                        index: 0, message: .init(role: "assistant", content: report.text),
                                        finishReason: report.stopReason,
                                        logprobs: report.logprobs.map(ChoiceLogprobs.init))
                                ],
                                usage: usage(report), sessionId: visible, kvtier: KVTierReport(report)))
                    }
                    respond(response ?? Response(status: 500, body: []))
                case .failure(let error):
                    failed(error)
                    respond(errorResponse(error))
                }
            }
            return
        }
        // Server-sent events: the head now (the request is accepted), one chunk per piece of text
        // as the turn runs, then a last chunk with finish reason, usage and the kvtier report,
        // then [DONE].
        stream.start(200, "text/event-stream")
        let encoder = APIJSON.encoder()
        let event: @Sendable (any Encodable) -> Void = { value in
            if let data = try? encoder.encode(value) {
                stream.send(Array("data: ".utf8) + Array(data) + Array("\n\n".utf8))
            }
        }
        // The first chunk of a chat says who speaks (OpenAI's SDKs build the message from it), no text yet.
        if !text {
            event(
                ChatCompletionChunk(
                    id: id, created: created, model: modelName, delta: .init(role: "assistant", content: nil),
                    finish: nil))
        }
        let turn = TurnScheduler.Turn(
            session: stored, owner: r.peer.namespace, messages: messages, options: options,
            nextTurnInSeconds: valid.nextTurnInSeconds,
            onText: { piece in
                if text {
                    event(
                        TextCompletion(
                            id: id, created: created, model: modelName, choices: [.init(text: piece, finishReason: nil)]
                        )
                    )
                    return
                }
                var chunk = ChatCompletionChunk(
                    id: id, created: created, model: modelName, delta: .init(content: piece), finish: nil)
                chunk.choices[0].logprobs = takeLogprobs()
                event(chunk)
            })
        scheduler.submit(turn) { [self] result in
            switch result {
            case .success(let report) where text:
                finished(report)
                event(
                    TextCompletion(
                        id: id, created: created, model: modelName,
                        choices: [.init(text: "", finishReason: report.stopReason)], usage: usage(report),
                        sessionId: visible, kvtier: KVTierReport(report)))
                if valid.includeUsage {
                    event(TextCompletion(id: id, created: created, model: modelName, choices: [], usage: usage(report)))
                }
                answered(r, status: 200)
            case .success(let report):
                finished(report)
                var last = ChatCompletionChunk(
                    id: id, created: created, model: modelName, delta: .init(content: nil), finish: report.stopReason)
                last.usage = usage(report)
                last.sessionId = visible
                last.kvtier = KVTierReport(report)
                if let rest = takeLogprobs(), !rest.content.isEmpty { last.choices[0].logprobs = rest }
                event(last)
                if valid.includeUsage {
                    event(ChatCompletionChunk(id: id, created: created, model: modelName, usage: usage(report)))
                }
                answered(r, status: 200)
            case .failure(let error):
                failed(error)
                let e = apiError(error)
                event(e)
                answered(r, status: e.status)
            }
            stream.send(Array("data: [DONE]\n\n".utf8))
            stream.end()
        }
    }
}
