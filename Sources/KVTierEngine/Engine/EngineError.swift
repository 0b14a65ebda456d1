/// Failures of a chat turn that are not bad input.
public enum EngineError: Error, Sendable, CustomStringConvertible {
    /// Stored KV kept failing to load (missing or corrupt) after recomputing the failed blocks.
    case loadKeepsFailing(session: String, blocks: Int)
    /// The turn's client went away while it was queued; it was dropped before computing anything.
    case clientGone(session: String)
    /// The turn's client went away while its prompt was being computed; the turn stopped at the
    /// next step, and the session is as it was before the turn.
    case cancelledDuringPrompt(session: String)

    public var description: String {
        switch self {
        case .loadKeepsFailing(let session, let blocks):
            return "session \(session): \(blocks) stored KV blocks failed to load repeatedly; "
                + "check the tiers (kvtierctl) or delete the session and retry"
        case .cancelledDuringPrompt(let session):
            return "session \(session): the client closed the connection while the prompt was computed; "
                + "the turn stopped and the session is unchanged"
        case .clientGone(let session):
            return "session \(session): the client closed the connection before the turn started; "
                + "nothing was computed or changed"
        }
    }
}
