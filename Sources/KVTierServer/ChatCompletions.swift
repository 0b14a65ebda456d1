import Dispatch
import Foundation
import KVTierAPI
import KVTierEngine
import KVTierModel
import NIOConcurrencyHelpers

/// `POST /v1/chat/completions` and `POST /v1/completions` (a text completion: the prompt
/// continued without the chat template, answered as `text_completion` objects): validation
/// (`ValidatedChatRequest`), admission against the queue and the caller's share, the session it
/// belongs to, then its turns (`CompletionJob`); runs on `APIService.requests`.
extension APIService {
    func chatCompletion(_ r: Request, stream: StreamSink, respond: @escaping @Sendable (Response) -> Void) throws {
        let limits = self.limits.withLockedValue { $0 }
        let valid =
            r.path == "/v1/completions"
            ? try ValidatedChatRequest(
                textCompletionBody: r.body, sessionHeader: r.headers["x-session-id"], limits: limits)
            : try ValidatedChatRequest(body: r.body, sessionHeader: r.headers["x-session-id"], limits: limits)
        if stopping.withLockedValue({ $0 }) {
            throw APIError(503, "unavailable", "kvtierd is shutting down; retry after it restarts", retryAfter: 5)
        }
        guard valid.choices <= limits.maxTurnsPerUser else {
            throw APIError(
                400, "invalid_request_error",
                "n: \(valid.choices) choices are \(valid.choices) turns; at most \(limits.maxTurnsPerUser) of yours "
                    + "may be queued or running (server.max_turns_per_user)")
        }
        let depth = scheduler.depth
        guard depth < limits.maxQueue else {
            let retry = max(1, Int((Double(depth + 1) * turnSeconds.withLockedValue { $0 }).rounded(.up)))
            throw APIError(
                429, "rate_limit_exceeded",
                "\(depth) turns are waiting (server.max_queue = \(limits.maxQueue)); retry in \(retry) s",
                retryAfter: retry)
        }
        // Every choice is a turn of the caller's: all of them must fit their share.
        let mine = scheduler.outstanding(owner: r.peer.namespace) + valid.choices - 1
        guard mine < limits.maxTurnsPerUser else {
            let batch = max(1, scheduler.maxRunning)
            let retry = max(
                1,
                Int(
                    (Double(mine - limits.maxTurnsPerUser + 1) * turnSeconds.withLockedValue { $0 } / Double(batch))
                        .rounded(.up)))
            throw APIError(
                429, "rate_limit_exceeded",
                "you have \(mine - valid.choices + 1) turns queued or running and ask for \(valid.choices) more "
                    + "(server.max_turns_per_user = \(limits.maxTurnsPerUser)); retry in \(retry) s",
                retryAfter: retry)
        }

        // Session: an explicit id (in the caller's namespace), else the caller's anonymous chat
        // this request extends, else a new anonymous one; either way a new session starts from
        // the caller's chat sharing the longest prefix (the engine's prefix cache).
        // The messages are tokenized once, here, for the prefix cache and every choice's turn.
        let chat = engine.tokenize(valid.messages)
        let stored = engine.sessionForRequest(
            named: valid.sessionID.map { access.storedID($0, for: r.peer) }, chat: chat, owner: r.peer.namespace,
            newID: access.storedID("s-" + UUID().uuidString.lowercased(), for: r.peer))
        let job = CompletionJob(service: self, request: r, valid: valid, chat: chat, stream: stream, respond: respond)
        job.start(in: stored)
    }
}

/// The turns of one completion request and its answer. Choice 0 runs in the request's session;
/// with `n` > 1 the other choices start when it is done, each in a new anonymous session that the
/// prefix cache forks from choice 0's, so the prompt's KV is computed once and shared by every
/// choice (each samples with the request's seed plus its index). The answer (or, streamed, the
/// last events) goes out when every choice is done.
///
/// Threads: `start` runs on the API's request queue, the turns' callbacks on the turns' threads;
/// `state` (guarded by its lock) is all they share.
final class CompletionJob: Sendable {
    private let service: APIService
    private let request: APIService.Request
    private let valid: ValidatedChatRequest
    /// `valid.messages`, tokenized once for the whole request.
    private let chat: TokenizedConversation
    private let stream: APIService.StreamSink
    private let respond: @Sendable (APIService.Response) -> Void
    private let id: String
    private let created = Int(Date().timeIntervalSince1970)
    private let encoder = APIJSON.encoder()

    private struct State {
        var reports: [TurnReport?]
        var sessions: [String?]
        var error: (any Error)?
        var remaining: Int
        /// Streaming with logprobs: each choice's log probabilities not yet sent.
        var pendingLogprobs: [[TokenLogprob]]
    }
    private let state: NIOLockedValueBox<State>

    init(
        service: APIService, request: APIService.Request, valid: ValidatedChatRequest, chat: TokenizedConversation,
        stream: APIService.StreamSink, respond: @escaping @Sendable (APIService.Response) -> Void
    ) {
        self.service = service
        self.request = request
        self.valid = valid
        self.chat = chat
        self.stream = stream
        self.respond = respond
        id = (valid.isTextCompletion ? "cmpl-" : "chatcmpl-") + UUID().uuidString.lowercased()
        let n = valid.choices
        state = NIOLockedValueBox(
            State(
                reports: Array(repeating: nil, count: n), sessions: Array(repeating: nil, count: n), error: nil,
                remaining: n, pendingLogprobs: Array(repeating: [], count: n)))
    }

    private var modelName: String { service.modelName }

    func start(in session: String) {
        if valid.stream {
            // Server-sent events: the head now (the request is accepted), one chunk per piece of
            // text as the turns run, then per choice a chunk with its finish reason, usage and
            // report, then [DONE]. The first chunk of each choice of a chat says who speaks
            // (OpenAI's SDKs build the message from it), no text yet.
            stream.start(200, "text/event-stream")
            if !valid.isTextCompletion {
                for k in 0..<valid.choices {
                    var chunk = ChatCompletionChunk(
                        id: id, created: created, model: modelName, delta: .init(role: "assistant", content: nil),
                        finish: nil)
                    chunk.choices[0].index = k
                    event(chunk)
                }
            }
        }
        run(choice: 0, in: session)
    }

    private func event(_ value: any Encodable) {
        if let data = try? encoder.encode(value) {
            stream.send(Array("data: ".utf8) + Array(data) + Array("\n\n".utf8))
        }
    }

    private func run(choice k: Int, in session: String) {
        state.withLockedValue { $0.sessions[k] = session }
        var options = GenerationOptions(
            maxTokens: valid.maxTokens, sampling: valid.sampling,
            stopAtEndOfGeneration: !valid.ignoreEndOfGeneration, stopSequences: valid.stopSequences,
            isCancelled: { [isClientGone = request.isClientGone] in isClientGone() })
        options.sampling.seed = valid.sampling.seed &+ UInt64(k)
        options.logprobs = valid.logprobs
        // Streaming: the log probabilities of each piece arrive just before it (on the turn's
        // thread) and ride in its chunk; any left at the end ride in the choice's last chunk.
        if valid.stream && valid.logprobs != nil {
            options.onLogprobs = { [state] lp in state.withLockedValue { $0.pendingLogprobs[k] += lp } }
        }
        var turn = TurnScheduler.Turn(
            session: session, owner: request.peer.namespace, messages: valid.messages, options: options,
            nextTurnInSeconds: valid.nextTurnInSeconds)
        turn.chat = chat
        if valid.stream { turn.onText = { [self] piece in streamed(piece, choice: k) } }
        service.scheduler.submit(turn) { [self] result in finished(choice: k, session: session, result) }
    }

    private func streamed(_ piece: String, choice k: Int) {
        if valid.isTextCompletion {
            event(
                TextCompletion(
                    id: id, created: created, model: modelName,
                    choices: [.init(index: k, text: piece, finishReason: nil)]))
            return
        }
        var chunk = ChatCompletionChunk(
            id: id, created: created, model: modelName, delta: .init(content: piece), finish: nil)
        chunk.choices[0].index = k
        chunk.choices[0].logprobs = takeLogprobs(k)
        event(chunk)
    }

    private func takeLogprobs(_ k: Int) -> ChoiceLogprobs? {
        guard valid.logprobs != nil else { return nil }
        return ChoiceLogprobs(
            state.withLockedValue { s in
                defer { s.pendingLogprobs[k] = [] }
                return s.pendingLogprobs[k]
            })
    }

    private func finished(choice k: Int, session: String, _ result: Result<TurnReport, any Error>) {
        service.engine.requestEnded(session: session)
        let visible = service.access.visibleID(session, for: request.peer)
        switch result {
        case .success(let report):
            service.metrics.record(report)
            service.turnSeconds.withLockedValue { $0 = 0.8 * $0 + 0.2 * report.totalMs / 1000 }
            if valid.stream { sendLast(of: k, report, session: visible) }
        case .failure(let error):
            switch error as? EngineError {
            case .clientGone?, .cancelledDuringPrompt?: service.metrics.recordCancelledBeforeReply()
            default: break
            }
        }
        let (done, startOthers) = state.withLockedValue { s -> (Bool, Bool) in
            switch result {
            case .success(let report): s.reports[k] = report
            case .failure(let error): s.error = s.error ?? error
            }
            s.remaining -= 1
            // Choice 0 failed: the others never start.
            if k == 0, s.error != nil {
                s.remaining -= valid.choices - 1
                return (s.remaining == 0, false)
            }
            return (s.remaining == 0, k == 0 && valid.choices > 1)
        }
        if startOthers {
            // Each in a new anonymous session forked from choice 0's (now stored): the prompt's
            // KV is reused, not computed again.
            for j in 1..<valid.choices {
                let fork = service.engine.sessionForRequest(
                    named: nil, chat: chat, owner: request.peer.namespace,
                    newID: service.access.storedID("s-" + UUID().uuidString.lowercased(), for: request.peer))
                run(choice: j, in: fork)
            }
        }
        if done { answer() }
    }

    /// Streaming: choice `k` is done; its last chunk carries its finish reason, its usage, the
    /// session its KV is in and its report.
    private func sendLast(of k: Int, _ report: TurnReport, session visible: String) {
        let usage = Usage(promptTokens: report.promptTokens, completionTokens: report.tokensGenerated)
        if valid.isTextCompletion {
            event(
                TextCompletion(
                    id: id, created: created, model: modelName,
                    choices: [.init(index: k, text: "", finishReason: report.stopReason)], usage: usage,
                    sessionId: visible, kvtier: KVTierReport(report)))
            return
        }
        var last = ChatCompletionChunk(
            id: id, created: created, model: modelName, delta: .init(content: nil), finish: report.stopReason)
        last.choices[0].index = k
        last.usage = usage
        last.sessionId = visible
        last.kvtier = KVTierReport(report)
        if let rest = takeLogprobs(k), !rest.content.isEmpty { last.choices[0].logprobs = rest }
        event(last)
    }

    /// Every choice is done: the answer, or the end of the stream.
    private func answer() {
        let (reports, sessions, error) = state.withLockedValue { ($0.reports, $0.sessions, $0.error) }
        let done = reports.compactMap { $0 }
        // The prompt counts once (every choice had the same); the completions add up.
        let usage = done.first.map {
            Usage(promptTokens: $0.promptTokens, completionTokens: done.map(\.tokensGenerated).reduce(0, +))
        }
        let visible = sessions.map { $0.map { service.access.visibleID($0, for: request.peer) } }
        if valid.stream {
            if let error {
                let e = service.apiError(error)
                event(e)
                service.answered(request, status: e.status)
            } else {
                if valid.includeUsage, let usage {
                    if valid.isTextCompletion {
                        event(TextCompletion(id: id, created: created, model: modelName, choices: [], usage: usage))
                    } else {
                        event(ChatCompletionChunk(id: id, created: created, model: modelName, usage: usage))
                    }
                }
                service.answered(request, status: 200)
            }
            stream.send(Array("data: [DONE]\n\n".utf8))
            stream.end()
            return
        }
        guard error == nil, done.count == reports.count, let first = done.first, let usage else {
            respond(service.errorResponse(error ?? APIError(500, "server_error", "a choice did not finish")))
            return
        }
        let many = valid.choices > 1
        let response: APIService.Response?
        if valid.isTextCompletion {
            response = try? service.json(
                200,
                TextCompletion(
                    id: id, created: created, model: modelName,
                    choices: done.enumerated().map { .init(index: $0, text: $1.text, finishReason: $1.stopReason) },
                    usage: usage, sessionId: visible[0], kvtier: KVTierReport(first)))
        } else {
            let choices = done.enumerated().map { k, report in
                var c = ChatCompletion.Choice(
                    index: k, message: .init(role: "assistant", content: report.text), finishReason: report.stopReason,
                    logprobs: report.logprobs.map(ChoiceLogprobs.init))
                if many {
                    c.sessionId = visible[k]
                    c.kvtier = KVTierReport(report)
                }
                return c
            }
            response = try? service.json(
                200,
                ChatCompletion(
                    id: id, created: created, model: modelName, choices: choices, usage: usage,
                    sessionId: visible[0] ?? "", kvtier: KVTierReport(first)))
        }
        respond(response ?? APIService.Response(status: 500, body: []))
    }
}
