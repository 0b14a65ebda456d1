#if canImport(Glibc)
import Glibc
#endif

/// The client of one connection.
public enum Peer: Sendable, Equatable {
    /// A process on the Unix socket, with its kernel-reported credentials.
    case local(PeerCredentials)
    /// A client of the optional loopback TCP listener: no credentials, never an admin, and its
    /// sessions live in one shared "tcp" namespace.
    case tcp

    /// The session namespace of this peer: its uid, or "tcp".
    public var namespace: String {
        switch self {
        case .local(let c): return String(c.uid)
        case .tcp: return "tcp"
        }
    }
}

/// Who may do what. Reading (chat, tiers, metrics, one's own sessions) is open to anyone who can
/// connect (the socket's mode and group decide that). Changing state that is not one's own
/// (`DELETE` of another's session, demote, flush, hints) needs an admin: root, the daemon's own
/// user, or a member of the configured admin group (primary or supplementary).
///
/// Sessions belong to the namespace of the peer that created them: the engine stores them as
/// "<namespace>:<id>", a client sees and names its own sessions by the bare id, and an admin
/// names anyone's by the full one.
public struct AccessPolicy: Sendable {
    public var daemonUID: UInt32
    public var adminGroup: UInt32?

    public init(daemonUID: UInt32 = getuid(), adminGroup: UInt32? = nil) {
        self.daemonUID = daemonUID
        self.adminGroup = adminGroup
    }

    public func isAdmin(_ peer: Peer) -> Bool {
        guard case .local(let c) = peer else { return false }
        if c.uid == 0 || c.uid == daemonUID { return true }
        guard let g = adminGroup else { return false }
        return c.gid == g || c.groups.contains(g)
    }

    /// The engine's id for `peer`'s session `id`.
    public func storedID(_ id: String, for peer: Peer) -> String { peer.namespace + ":" + id }

    /// The id `peer` knows stored session `stored` by: the bare id for its own sessions, the
    /// full id for others' (which only an admin is shown).
    public func visibleID(_ stored: String, for peer: Peer) -> String {
        let prefix = peer.namespace + ":"
        return stored.hasPrefix(prefix) ? String(stored.dropFirst(prefix.count)) : stored
    }

    /// Whether `peer` may see stored session `stored`.
    public func canSee(_ stored: String, peer: Peer) -> Bool {
        stored.hasPrefix(peer.namespace + ":") || isAdmin(peer)
    }

    /// Resolves an id from `peer`'s request to a stored session: its own first, then (admins
    /// only) a full id. nil when there is no such session for this peer, so another user's
    /// session is indistinguishable from a missing one.
    public func resolve(_ id: String, for peer: Peer, exists: (String) -> Bool) -> String? {
        let own = storedID(id, for: peer)
        if exists(own) { return own }
        if isAdmin(peer), exists(id) { return id }
        return nil
    }

    /// The gid of group `name`, or nil if there is no such group.
    public static func groupID(named name: String) -> UInt32? {
        guard let entry = getgrnam(name) else { return nil }
        return entry.pointee.gr_gid
    }
}
