// Unsafe code fence: the only place that reads socket options into raw C layouts.
#if canImport(Glibc)
import Glibc
#endif
import NIOCore

/// Who is at the other end of a Unix-socket connection, as the kernel saw it at `connect`:
/// SO_PEERCRED gives uid, gid and pid, SO_PEERGROUPS the supplementary groups (SO_PEERCRED
/// alone misses them, so a user in the admin group only through a supplementary membership
/// would be refused).
public struct PeerCredentials: Sendable, Equatable {
    public var uid: UInt32
    public var gid: UInt32
    public var pid: Int32
    /// Supplementary groups. Complete up to `maxGroups`; a peer in more groups than that is
    /// treated as in none of them (so it can only be refused admin, never wrongly granted it).
    public var groups: [UInt32]

    public init(uid: UInt32, gid: UInt32, pid: Int32, groups: [UInt32]) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.groups = groups
    }

    static let maxGroups = 256

    /// `struct ucred` from <sys/socket.h> (glibc hides it behind _GNU_SOURCE).
    private struct UCred: Sendable {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
    }

    private static let soPeerCred: Int32 = 17  // SO_PEERCRED, asm-generic/socket.h
    private static let soPeerGroups: Int32 = 59  // SO_PEERGROUPS, Linux 4.13+

    /// Reads the credentials of `channel`'s peer; fails if the channel is not a Unix socket.
    public static func read(from channel: Channel) -> EventLoopFuture<PeerCredentials> {
        guard let provider = channel as? SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
        }
        let level = SocketOptionLevel(SOL_SOCKET)
        let cred: EventLoopFuture<UCred> = provider.unsafeGetSocketOption(level: level, name: SocketOptionName(soPeerCred))
        return cred.flatMap { c in
            let groups: EventLoopFuture<InlineArray<256, UInt32>> = provider.unsafeGetSocketOption(
                level: level, name: SocketOptionName(soPeerGroups))
            return groups.map { raw in
                PeerCredentials(uid: c.uid, gid: c.gid, pid: c.pid, groups: decodeGroups(raw))
            }.recover { _ in
                // ERANGE (more groups than we read) or an old kernel: no supplementary groups.
                PeerCredentials(uid: c.uid, gid: c.gid, pid: c.pid, groups: [])
            }
        }
    }

    /// The kernel writes the groups sorted ascending and the rest of the buffer stays zero, so
    /// the list ends at the last non-zero entry; a leading 0 is group root only when a non-zero
    /// group follows it (an all-zero buffer is read as no groups: the safe side).
    private static func decodeGroups(_ raw: InlineArray<256, UInt32>) -> [UInt32] {
        var all: [UInt32] = []
        for i in raw.indices { all.append(raw[i]) }
        guard let last = all.lastIndex(where: { $0 != 0 }) else { return [] }
        return Array(all[0...last])
    }
}
