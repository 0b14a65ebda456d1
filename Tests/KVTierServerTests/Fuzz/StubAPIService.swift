import Foundation
import NIOConcurrencyHelpers

@testable import KVTierServer

/// Stands where `APIService` does behind `HTTPHandler`, for the HTTP fuzz target, without a model.
/// A chat completion goes through the real `ValidatedChatRequest` (decoding and validation are
/// the daemon's own code); a valid one gets a canned answer, plain or streamed. The other routes
/// answer as `APIService.route` does for a daemon with no sessions: 200 for the read-only
/// endpoints, 404 for a session, 405 for a wrong method, 404 for an unknown path.
///
/// Answers synchronously on the calling thread (the `EmbeddedChannel`'s), which the handler then
/// hands to its event loop like any other answer.
final class StubAPIService: HTTPRequestResponder {
    let limits: NIOLockedValueBox<ServerLimits>

    init(limits: ServerLimits) {
        self.limits = NIOLockedValueBox(limits)
    }

    func handle(_ r: APIService.Request, stream: APIService.StreamSink, respond: @escaping @Sendable (APIService.Response) -> Void) {
        do {
            if let response = try answer(r, stream: stream) { respond(response) }
        } catch {
            respond(APIService.Response(status: error.status, body: error.body))
        }
    }

    /// The answer, or nil when it went out as a stream.
    private func answer(_ r: APIService.Request, stream: APIService.StreamSink) throws(APIError) -> APIService.Response? {
        let ok = APIService.Response(status: 200, body: Array("{}".utf8))
        switch (r.method, r.path) {
        case ("POST", "/v1/chat/completions"):
            let valid = try ValidatedChatRequest(body: r.body, sessionHeader: r.headers["x-session-id"], limits: limits.withLockedValue { $0 })
            guard valid.stream else { return ok }
            stream.start(200, "text/event-stream")
            stream.send(Array("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"index\":0}]}\n\n".utf8))
            stream.send(Array("data: [DONE]\n\n".utf8))
            stream.end()
            return nil
        case ("GET", "/healthz"), ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/v1/tiers"), ("GET", "/v1/sessions"),
            ("POST", "/v1/flush"):
            return ok
        case ("POST", "/v1/hints"):
            struct Hints: Decodable { let upcoming: [String] }
            guard (try? RequestJSON.decode(Hints.self, from: r.body)) != nil else {
                throw APIError(400, "invalid_request_error", "expected {\"upcoming\": [session ids]}")
            }
            return ok
        case (_, let path) where path.hasPrefix("/v1/sessions/"):
            let rest = path.dropFirst("/v1/sessions/".count).split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard let rawID = rest.first, let id = rawID.removingPercentEncoding, !id.isEmpty else {
                throw APIError(404, "not_found", "no session id in \(r.path)")
            }
            throw APIError(404, "not_found", "no session '\(id)'")
        case (_, "/healthz"), (_, "/v1/models"), (_, "/metrics"), (_, "/v1/chat/completions"), (_, "/v1/tiers"),
            (_, "/v1/sessions"), (_, "/v1/flush"), (_, "/v1/hints"):
            throw APIError(405, "invalid_request_error", "method \(r.method) is not allowed on \(r.path)")
        default:
            throw APIError(404, "not_found", "no endpoint \(r.method) \(r.path); see docs/protocol.md")
        }
    }
}
