/// Failures of a chat turn that are not bad input.
public enum EngineError: Error, Sendable, CustomStringConvertible {
    /// Stored KV kept failing to load (missing or corrupt) after recomputing the failed blocks.
    case loadKeepsFailing(session: String, blocks: Int)

    public var description: String {
        switch self {
        case .loadKeepsFailing(let session, let blocks):
            return "session \(session): \(blocks) stored KV blocks failed to load repeatedly; check the tiers (kvtierctl) or delete the session and retry"
        }
    }
}
