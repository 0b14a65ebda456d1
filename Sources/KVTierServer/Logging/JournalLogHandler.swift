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
/// With `log.format = "json"` each line is instead one JSON object (`time`, `level`, `label`,
/// `message`, and the metadata under `metadata`), for log shippers; under systemd the priority
/// prefix stays in front of it, so the journal still files each line by level.
///
/// The level and format are shared by every logger of the process and can change at run time
/// (SIGHUP reloads them from the configuration); `level` and `format` guard them.
public struct JournalLogHandler: LogHandler {
    public enum Format: String, Sendable, CaseIterable {
        case text, json
    }

    public static let level = NIOLockedValueBox<Logger.Level>(.info)
    public static let format = NIOLockedValueBox<Format>(.text)
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
        let prefix = Self.toJournal ? "<\(Self.priority(event.level))>" : ""
        let line: String
        switch Self.format.withLockedValue({ $0 }) {
        case .text:
            let fields = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            let text = "\(event.message)" + (fields.isEmpty ? "" : " " + fields)
            line = Self.toJournal ? "\(prefix)\(label): \(text)\n" : "\(Date().formatted(.iso8601)) \(event.level) \(label): \(text)\n"
        case .json:
            line = prefix + Self.json(event: event, label: label, metadata: all) + "\n"
        }
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// One compact JSON object, keys sorted; metadata values as JSON strings, arrays and objects.
    static func json(event: LogEvent, label: String, metadata: Logger.Metadata) -> String {
        func value(_ v: Logger.MetadataValue) -> Any {
            switch v {
            case .string(let s): return s
            case .stringConvertible(let c): return c.description
            case .array(let a): return a.map(value)
            case .dictionary(let d): return d.mapValues(value)
            }
        }
        var object: [String: Any] = [
            "time": Date().formatted(.iso8601), "level": event.level.rawValue, "label": label, "message": "\(event.message)",
        ]
        if !metadata.isEmpty { object["metadata"] = metadata.mapValues(value) }
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else {
            return #"{"level":"error","message":"a log line could not be written as JSON"}"#
        }
        return String(decoding: data, as: UTF8.self)
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
