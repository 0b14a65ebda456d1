/// Bounds on what one request or one client may ask of the daemon. All of them can change at
/// run time (SIGHUP reloads them from the configuration file).
public struct ServerLimits: Sendable, Equatable {
    /// Largest request body; a larger one gets 413.
    public var maxBodyBytes = 1 << 20
    /// Largest `max_tokens`.
    public var maxTokens = 4096
    /// Most messages in one chat completion request.
    public var maxMessages = 1024
    /// Turns waiting (not counting the running ones) before new ones get 429 with Retry-After.
    public var maxQueue = 64
    /// Turns of one user (one uid's namespace; all TCP clients together) queued plus running
    /// before that user's new ones get 429 with Retry-After; other users are not affected.
    public var maxTurnsPerUser = 32
    /// Connections open at once; beyond it a new connection gets 503 with Retry-After and is
    /// closed (the file descriptors stay for the others, /healthz among them).
    public var maxConnections = 4096
    /// Connections of one user (one uid; all TCP clients together) open at once; beyond it that
    /// user's new connection gets 429 and is closed; other users are not affected.
    public var maxConnectionsPerUser = 1024
    /// A connection with no request in flight and nothing received for this long is closed.
    public var idleTimeoutSeconds = 60.0
    /// A request whose head and body have not fully arrived this long after its first byte gets
    /// 408 and the connection is closed (slow clients cannot hold a connection forever).
    public var requestTimeoutSeconds = 30.0

    public init() {}
}
