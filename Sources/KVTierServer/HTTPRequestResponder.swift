import NIOConcurrencyHelpers

/// What a connection's `HTTPHandler` needs from the layer behind it: the current limits and a way
/// to answer one request. `APIService` is the real one; the fuzz tests put a stand-in here that
/// decodes and validates exactly as `APIService` does but runs no model.
///
/// `handle` may answer on any thread, once: either through `respond`, or (a streamed chat
/// completion) through `stream`.
protocol HTTPRequestResponder: Sendable {
    var limits: NIOLockedValueBox<ServerLimits> { get }
    func handle(
        _ r: APIService.Request, stream: APIService.StreamSink, respond: @escaping @Sendable (APIService.Response) -> Void)
}

extension APIService: HTTPRequestResponder {}
