/// Failures of the Redis client, each saying what happened and what to do.
public enum RedisError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No TCP connection to the node (refused, unreachable, timed out).
    case connect(address: String, reason: String)
    /// The connection broke or timed out mid-reply.
    case io(address: String, reason: String)
    /// The server sent bytes that are not RESP (not a Redis server, or a damaged stream).
    case protocolViolation(String)
    /// AUTH was refused: wrong user or password, or the user may not run a command.
    case authentication(address: String, message: String)
    /// None of the seed or known nodes answered CLUSTER SLOTS with a usable map.
    case noTopology(String)
    /// A command kept being redirected or refused (TRYAGAIN, CLUSTERDOWN) past the retry budget.
    case unavailable(String)

    public var description: String {
        switch self {
        case .connect(let a, let r):
            return "cannot connect to Redis node \(a): \(r); check that the cluster is up and store.remote.seeds"
        case .io(let a, let r):
            return "connection to Redis node \(a) failed: \(r)"
        case .protocolViolation(let m):
            return "the Redis server sent a reply that is not RESP (\(m)); check that the seeds name Redis nodes"
        case .authentication(let a, let m):
            return "Redis node \(a) refused authentication (\(m)); check store.remote.user and password_file"
        case .noTopology(let m):
            return "no Redis Cluster node gave its slot map (\(m)); check store.remote.seeds"
        case .unavailable(let m):
            return "the Redis Cluster did not serve the command (\(m)); it is retried later"
        }
    }
}
