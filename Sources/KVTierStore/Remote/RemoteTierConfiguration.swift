/// Where and how the remote tier (a Redis Cluster shared by several kvtierd nodes) keeps blocks.
public struct RemoteTierConfiguration: Sendable, Equatable {
    /// "host:port" of cluster nodes to learn the topology from (one live node is enough).
    public var seeds: [String]
    /// ACL user (nil: Redis's `default` user).
    public var user: String?
    /// The password (the daemon reads it from `store.remote.password_file`; nil: no AUTH).
    public var password: String?
    /// Prepended to every key, so several deployments can share one cluster. No braces.
    public var keyPrefix = "kvtier:"
    /// Blocks whose stored value is larger are kept local only (Redis's own limit is 512 MB).
    public var maxObjectBytes = 8 << 20
    /// Keys expire this long after their last write (0: never; then the cluster's maxmemory
    /// policy decides what goes).
    public var ttlSeconds = 7 * 86_400
    /// Writes waiting to go out beyond this are dropped (counted), so a slow cluster never
    /// holds memory or a turn.
    public var maxPendingWriteBytes = 256 << 20
    /// Blocks no longer referenced are deleted from the cluster this long after (another node may
    /// still be loading them for a record it read just before).
    public var retireSeconds = 10.0
    /// How often a degraded tier probes the cluster.
    public var retryIntervalSeconds = 5.0
    /// Bounds on one connect and one reply: a stalled node costs a turn at most a few of these.
    public var connectTimeoutSeconds = 0.5
    public var ioTimeoutSeconds = 0.5

    public init(seeds: [String], user: String? = nil, password: String? = nil) {
        self.seeds = seeds
        self.user = user
        self.password = password
    }

    /// Why the configuration cannot be used, or nil.
    public var problem: String? {
        if seeds.isEmpty { return "store.remote.seeds is empty: name at least one cluster node as host:port" }
        for s in seeds {
            guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]),
                (1...65535).contains(port), colon != s.startIndex
            else { return "store.remote.seeds: '\(s)' is not host:port" }
        }
        if keyPrefix.contains("{") || keyPrefix.contains("}") {
            return "store.remote.key_prefix may not contain braces (they would change the keys' hash slots)"
        }
        if maxObjectBytes < 1024 { return "store.remote.max_object_bytes must be at least 1024" }
        if ttlSeconds < 0 { return "store.remote.ttl_seconds must be 0 (no expiry) or more" }
        return nil
    }
}
