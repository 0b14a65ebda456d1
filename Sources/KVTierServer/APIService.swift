import Dispatch
import Foundation
import KVTierEngine
import KVTierModel
import KVTierStore

/// The endpoints, independent of HTTP plumbing: a request in, a status and JSON body out.
/// Requests run one at a time on `queue` (the engine runs one turn at a time anyway), off the
/// event loop.
public final class APIService: Sendable {
    public struct Request: Sendable {
        public var method: String
        public var path: String
        public var headers: [String: String]
        public var body: [UInt8]
    }

    /// Where a streaming response goes: `start` once, then `send` per event, then `end`.
    public struct StreamSink: Sendable {
        public var start: @Sendable (_ status: Int, _ contentType: String) -> Void
        public var send: @Sendable (_ bytes: [UInt8]) -> Void
        public var end: @Sendable () -> Void
    }

    public struct Response: Sendable {
        public var status: Int
        public var body: [UInt8]
        public var contentType = "application/json"
    }

    let engine: ChatEngine
    let modelName: String
    let queue = DispatchQueue(label: "kvtier.server.api")
    /// Largest accepted `max_tokens`.
    let maxTokensLimit: Int

    public init(engine: ChatEngine, modelName: String, maxTokensLimit: Int = 4096) {
        self.engine = engine
        self.modelName = modelName
        self.maxTokensLimit = maxTokensLimit
    }

    /// Waits for the request being handled, if any.
    public func drain() { queue.sync {} }

    /// Handles a request. A chat completion with `stream: true` writes server-sent events to
    /// `stream` and returns nil; everything else returns its response.
    public func handle(_ r: Request, stream: StreamSink? = nil) -> Response? {
        if r.method == "POST", r.path == "/v1/chat/completions", let stream {
            do {
                return try chatCompletion(r, stream: stream)
            } catch let e as APIError {
                return (try? json(e.status, e)) ?? Response(status: 500, body: [])
            } catch {
                return (try? json(500, APIError(500, "server_error", "\(error)"))) ?? Response(status: 500, body: [])
            }
        }
        return handle(r)
    }

    public func handle(_ r: Request) -> Response {
        do {
            switch (r.method, r.path) {
            case ("GET", "/healthz"):
                return try json(200, ["status": "ok"])
            case ("GET", "/v1/models"):
                struct Model: Encodable { let id: String; let object = "model"; let owned_by = "kvtier" }
                struct List: Encodable { let object = "list"; let data: [Model] }
                return try json(200, List(data: [Model(id: modelName)]))
            case ("POST", "/v1/chat/completions"):
                guard let response = try chatCompletion(r) else { throw APIError(500, "server_error", "no response") }
                return response
            case ("GET", "/v1/tiers"):
                return try json(200, engine.store.stats.tiers)
            case ("GET", "/v1/sessions"):
                struct Session: Encodable { let id: String; let tokens: Int; let cached_tokens: Int; let dropped_tokens: Int }
                let list = engine.sessionIDs.compactMap { id in
                    engine.sessionSummary(id).map { Session(id: id, tokens: $0.tokens, cached_tokens: $0.kv, dropped_tokens: $0.dropped) }
                }
                return try json(200, ["sessions": list])
            case ("POST", "/v1/flush"):
                try engine.store.flush()
                return try json(200, ["flushed": true])
            case ("POST", "/v1/hints"):
                struct Hints: Decodable { let upcoming: [String] }
                guard let h = try? JSONDecoder().decode(Hints.self, from: Data(r.body)) else {
                    throw APIError(400, "invalid_request_error", "expected {\"upcoming\": [session ids]}")
                }
                engine.store.setUpcoming(h.upcoming)
                for s in h.upcoming { engine.store.prefetch(session: s) }
                return try json(200, ["upcoming": h.upcoming])
            case (_, let path) where path.hasPrefix("/v1/sessions/"):
                return try sessionEndpoint(r)
            case (_, "/healthz"), (_, "/v1/models"), (_, "/v1/chat/completions"), (_, "/v1/tiers"), (_, "/v1/sessions"),
                (_, "/v1/flush"), (_, "/v1/hints"):
                throw APIError(405, "invalid_request_error", "method \(r.method) is not allowed on \(r.path)")
            default:
                throw APIError(404, "not_found", "no endpoint \(r.method) \(r.path); see docs/protocol.md")
            }
        } catch let e as APIError {
            return (try? json(e.status, e)) ?? Response(status: 500, body: [])
        } catch {
            let e = APIError(500, "server_error", "\(error)")
            return (try? json(500, e)) ?? Response(status: 500, body: [])
        }
    }

    private func chatCompletion(_ r: Request, stream: StreamSink? = nil) throws -> Response? {
        let req: ChatCompletionRequest
        do {
            req = try JSONDecoder().decode(ChatCompletionRequest.self, from: Data(r.body))
        } catch {
            throw APIError(400, "invalid_request_error", "the request body is not a valid chat completion request: \(describe(error))")
        }
        guard !req.messages.isEmpty, req.messages.last?.role == "user" else {
            throw APIError(400, "invalid_request_error", "messages must be non-empty and end with a user message")
        }
        let streaming = req.stream == true
        guard !streaming || stream != nil else {
            throw APIError(400, "invalid_request_error", "stream: true needs a streaming connection")
        }
        let maxTokens = req.max_tokens ?? 256
        guard (1...maxTokensLimit).contains(maxTokens) else {
            throw APIError(400, "invalid_request_error", "max_tokens must be between 1 and \(maxTokensLimit), got \(maxTokens)")
        }
        let sampling = SamplingParameters(
            temperature: req.temperature ?? 0.7, topP: req.top_p ?? 1, seed: req.seed ?? UInt64.random(in: 0...UInt64.max))
        do { try sampling.validate() } catch { throw APIError(400, "invalid_request_error", error.description) }
        let messages = req.messages.map { ChatMessage(role: $0.role, content: $0.content) }
        // Session: explicit id, else the session holding the longest cached prefix, else a new one.
        let session = req.session_id ?? r.headers["x-session-id"]
            ?? engine.matchSession(messages: messages)?.session ?? "s-" + UUID().uuidString.lowercased()
        guard !session.isEmpty, session.utf8.count <= 256 else {
            throw APIError(400, "invalid_request_error", "session_id must be 1 to 256 bytes")
        }
        let id = "chatcmpl-" + UUID().uuidString.lowercased()
        let created = Int(Date().timeIntervalSince1970)
        if streaming, let stream {
            // Server-sent events: one chunk per piece of text, then a last chunk with the finish
            // reason, usage and the kvtier report, then [DONE].
            stream.start(200, "text/event-stream")
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            func event<T: Encodable>(_ value: T) {
                if let data = try? enc.encode(value) { stream.send(Array("data: ".utf8) + Array(data) + Array("\n\n".utf8)) }
            }
            do {
                let report = try engine.runTurn(
                    session: session, messages: messages, options: GenerationOptions(maxTokens: maxTokens, sampling: sampling)
                ) { piece in
                    event(StreamChunk(id: id, created: created, model: modelName, delta: .init(content: piece), finish: nil))
                }
                var last = StreamChunk(id: id, created: created, model: modelName, delta: .init(content: nil), finish: report.stopReason)
                last.usage = .init(prompt_tokens: report.promptTokens, completion_tokens: report.tokensGenerated,
                                   total_tokens: report.promptTokens + report.tokensGenerated)
                last.session_id = session
                last.kvtier = KVTierReport(report)
                event(last)
            } catch {
                event(APIError(500, "server_error", "\(error)"))
            }
            stream.send(Array("data: [DONE]\n\n".utf8))
            stream.end()
            return nil
        }
        let report = try engine.runTurn(
            session: session, messages: messages, options: GenerationOptions(maxTokens: maxTokens, sampling: sampling))
        let response = ChatCompletionResponse(
            id: id, created: created, model: modelName,
            choices: [.init(index: 0, message: .init(role: "assistant", content: report.text), finish_reason: report.stopReason)],
            usage: .init(prompt_tokens: report.promptTokens, completion_tokens: report.tokensGenerated,
                         total_tokens: report.promptTokens + report.tokensGenerated),
            session_id: session, kvtier: KVTierReport(report))
        return try json(200, response)
    }

    /// `/v1/sessions/{id}` (GET, DELETE) and `/v1/sessions/{id}/demote` (POST).
    private func sessionEndpoint(_ r: Request) throws -> Response {
        let rest = r.path.dropFirst("/v1/sessions/".count).split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard let rawID = rest.first, let id = rawID.removingPercentEncoding, !id.isEmpty else {
            throw APIError(404, "not_found", "no session id in \(r.path)")
        }
        guard let summary = engine.sessionSummary(id) else { throw APIError(404, "not_found", "no session '\(id)'") }
        switch (r.method, rest.count > 1 ? rest[1] : nil) {
        case ("GET", nil):
            struct Layer: Encodable { let layer: Int; let blocks: Int; let tokens: Int; let hbm: Int; let dram: Int; let disk: Int }
            struct Detail: Encodable { let id: String; let tokens: Int; let cached_tokens: Int; let dropped_tokens: Int; let layers: [Layer] }
            let placement = engine.store.placement(session: id)
            let layers = placement.layers.enumerated().map { l, blocks in
                Layer(
                    layer: l, blocks: blocks.count, tokens: blocks.reduce(0) { $0 + $1.tokens.count },
                    hbm: blocks.filter { $0.tiers.contains(.hbm) }.count, dram: blocks.filter { $0.tiers.contains(.dram) }.count,
                    disk: blocks.filter { $0.tiers.contains(.disk) }.count)
            }
            return try json(200, Detail(id: id, tokens: summary.tokens, cached_tokens: summary.kv, dropped_tokens: summary.dropped, layers: layers))
        case ("DELETE", nil):
            try engine.deleteSession(id)
            return try json(200, ["deleted": id])
        case ("POST", "demote"?):
            struct Demote: Decodable { let to: String }
            guard let d = try? JSONDecoder().decode(Demote.self, from: Data(r.body)), let tier = Tier(rawValue: d.to), tier != .hbm else {
                throw APIError(400, "invalid_request_error", "expected {\"to\": \"dram\"} or {\"to\": \"disk\"}")
            }
            try engine.store.demote(session: id, to: tier)
            return try json(200, ["demoted": id, "to": tier.rawValue])
        default:
            throw APIError(405, "invalid_request_error", "method \(r.method) is not allowed on \(r.path)")
        }
    }

    private func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing field '\(key.stringValue)'"
        case DecodingError.typeMismatch(_, let c): return "wrong type at '\(c.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.valueNotFound(_, let c): return "null at '\(c.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.dataCorrupted: return "malformed JSON"
        default: return "\(error)"
        }
    }

    private func json<T: Encodable>(_ status: Int, _ value: T) throws -> Response {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return Response(status: status, body: Array(try enc.encode(value)))
    }
}
