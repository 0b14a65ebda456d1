#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import NIOConcurrencyHelpers

/// swift-log handler writing one line per event to stderr.
///
/// Under systemd (stderr is the journal: `JOURNAL_STREAM` matches stderr's device and inode)
/// each line starts with a syslog priority prefix such as `<4>`, which journald turns into the
/// entry's priority, and carries no timestamp (the journal adds its own). Elsewhere lines carry
/// an ISO 8601 timestamp and the level's name. Metadata follows the message as key=value.
///
/// The level is shared by every logger of the process and can change at run time (SIGHUP
/// reloads it from the configuration); `level` guards it.
public struct JournalLogHandler: LogHandler {
    public static let level = NIOLockedValueBox<Logger.Level>(.info)
    private static let toJournal = JournalLogHandler.stderrIsJournal()
    private let label: String
    public var metadata: Logger.Metadata = [:]

    public init(label: String) {
        self.label = label
    }

    public var logLevel: Logger.Level {
        get { Self.level.withLockedValue { $0 } }
        set { Self.level.withLockedValue { $0 = newValue } }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        let fields = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let text = "\(event.message)" + (fields.isEmpty ? "" : " " + fields)
        let line: String
        if Self.toJournal {
            line = "<\(Self.priority(event.level))>\(label): \(text)\n"
        } else {
            line = "\(Date().formatted(.iso8601)) \(event.level) \(label): \(text)\n"
        }
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// syslog priorities (sd-daemon.h SD_DEBUG ... SD_CRIT).
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// systemd sets JOURNAL_STREAM to "device:inode" of the stream it connected stderr to.
    static func stderrIsJournal() -> Bool {
        guard let value = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(2, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }
}
