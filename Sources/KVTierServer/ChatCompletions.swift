import Dispatch
import Foundation
import KVTierEngine
import KVTierModel

/// `POST /v1/chat/completions`: validation, the session it belongs to, and the turn queued on
/// the scheduler; runs on `APIService.requests`, the turn's completion on the scheduler's queue.
extension APIService {
    func chatCompletion(_ r: Request, stream: StreamSink, respond: @escaping @Sendable (Response) -> Void) throws {
        let limits = self.limits.withLockedValue { $0 }
        let req: ChatCompletionRequest
        do {
            req = try JSONDecoder().decode(ChatCompletionRequest.self, from: Data(r.body))
        } catch {
            throw APIError(400, "invalid_request_error", "the request body is not a valid chat completion request: \(describe(error))")
        }
        guard !req.messages.isEmpty, req.messages.last?.role == "user" else {
            throw APIError(400, "invalid_request_error", "messages must be non-empty and end with a user message")
        }
        guard req.messages.count <= limits.maxMessages else {
            throw APIError(400, "invalid_request_error", "\(req.messages.count) messages; at most \(limits.maxMessages) are accepted (server.max_messages)")
        }
        if let bad = req.messages.first(where: { !["system", "user", "assistant"].contains($0.role) }) {
            throw APIError(400, "invalid_request_error", "unknown role '\(bad.role)'; use system, user or assistant")
        }
        let maxTokens = req.max_tokens ?? 256
        guard (1...limits.maxTokens).contains(maxTokens) else {
            throw APIError(400, "invalid_request_error", "max_tokens must be between 1 and \(limits.maxTokens), got \(maxTokens)")
        }
        let stops = req.stop?.values ?? []
        guard stops.count <= 4, stops.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 256 }) else {
            throw APIError(400, "invalid_request_error", "stop takes up to 4 non-empty strings of at most 256 bytes")
        }
        let sampling = SamplingParameters(
            temperature: req.temperature ?? 0.7, topP: req.top_p ?? 1, seed: req.seed ?? UInt64.random(in: 0...UInt64.max))
        do { try sampling.validate() } catch { throw APIError(400, "invalid_request_error", error.description) }
        let messages = req.messages.map { ChatMessage(role: $0.role, content: $0.content) }
        if stopping.withLockedValue({ $0 }) {
            throw APIError(503, "unavailable", "kvtierd is shutting down; retry after it restarts", retryAfter: 5)
        }
        let depth = scheduler.depth
        guard depth < limits.maxQueue else {
            let retry = max(1, Int((Double(depth + 1) * turnSeconds.withLockedValue { $0 }).rounded(.up)))
            throw APIError(
                429, "rate_limit_exceeded", "\(depth) turns are waiting (server.max_queue = \(limits.maxQueue)); retry in \(retry) s",
                retryAfter: retry)
        }

        // Session: an explicit id (in the caller's namespace), else the caller's session holding
        // the longest cached prefix of these messages, else a new one.
        let stored: String
        if let explicit = req.session_id ?? r.headers["x-session-id"] {
            guard !explicit.isEmpty, explicit.utf8.count <= 256 else {
                throw APIError(400, "invalid_request_error", "session_id must be 1 to 256 bytes")
            }
            stored = access.storedID(explicit, for: r.peer)
        } else {
            stored = engine.matchSession(messages: messages, owner: r.peer.namespace)?.session
                ?? access.storedID("s-" + UUID().uuidString.lowercased(), for: r.peer)
        }
        let visible = access.visibleID(stored, for: r.peer)
        let id = "chatcmpl-" + UUID().uuidString.lowercased()
        let created = Int(Date().timeIntervalSince1970)
        let options = GenerationOptions(
            maxTokens: maxTokens, sampling: sampling, stopSequences: stops,
            isCancelled: { [isClientGone = r.isClientGone] in isClientGone() })
        let modelName = self.modelName
        let metrics = self.metrics
        let turnSeconds = self.turnSeconds

        let finished: @Sendable (TurnReport) -> Void = { report in
            metrics.record(report)
            turnSeconds.withLockedValue { $0 = 0.8 * $0 + 0.2 * report.totalMs / 1000 }
        }
        let usage: @Sendable (TurnReport) -> ChatCompletionResponse.Usage = {
            .init(prompt_tokens: $0.promptTokens, completion_tokens: $0.tokensGenerated, total_tokens: $0.promptTokens + $0.tokensGenerated)
        }
        guard req.stream == true else {
            let turn = TurnScheduler.Turn(session: stored, owner: r.peer.namespace, messages: messages, options: options)
            scheduler.submit(turn) { [self] result in
                switch result {
                case .success(let report):
                    finished(report)
                    let body = ChatCompletionResponse(
                        id: id, created: created, model: modelName,
                        choices: [.init(index: 0, message: .init(role: "assistant", content: report.text), finish_reason: report.stopReason)],
                        usage: usage(report), session_id: visible, kvtier: KVTierReport(report))
                    respond((try? json(200, body)) ?? Response(status: 500, body: []))
                case .failure(let error):
                    respond(errorResponse(error))
                }
            }
            return
        }
        // Server-sent events: the head now (the request is accepted), one chunk per piece of text
        // as the turn runs, then a last chunk with finish reason, usage and the kvtier report,
        // then [DONE].
        stream.start(200, "text/event-stream")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let event: @Sendable (any Encodable) -> Void = { value in
            if let data = try? encoder.encode(value) { stream.send(Array("data: ".utf8) + Array(data) + Array("\n\n".utf8)) }
        }
        let turn = TurnScheduler.Turn(
            session: stored, owner: r.peer.namespace, messages: messages, options: options,
            onText: { piece in event(StreamChunk(id: id, created: created, model: modelName, delta: .init(content: piece), finish: nil)) })
        scheduler.submit(turn) { result in
            switch result {
            case .success(let report):
                finished(report)
                var last = StreamChunk(id: id, created: created, model: modelName, delta: .init(content: nil), finish: report.stopReason)
                last.usage = usage(report)
                last.session_id = visible
                last.kvtier = KVTierReport(report)
                event(last)
                metrics.response(status: 200)
            case .failure(let error):
                let e = (error as? APIError) ?? APIError(500, "server_error", "\(error)")
                event(e)
                metrics.response(status: e.status)
            }
            stream.send(Array("data: [DONE]\n\n".utf8))
            stream.end()
        }
    }

    func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing field '\(key.stringValue)'"
        case DecodingError.typeMismatch(_, let c): return "wrong type at '\(c.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.valueNotFound(_, let c): return "null at '\(c.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.dataCorrupted: return "malformed JSON"
        default: return "\(error)"
        }
    }
}
