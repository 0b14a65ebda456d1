import Foundation

/// One ShareGPT record: `{"id": ..., "conversations": [{"from": "human"|"gpt"|..., "value": ...}]}`.
/// Other keys of a record or a message are ignored.
public struct ShareGPTConversation: Sendable, Equatable, Decodable {
    public struct Message: Sendable, Equatable, Decodable {
        /// Who wrote it, as the file says: mostly "human" and "gpt"; a few records use "system",
        /// "user", "bing", "chatgpt".
        public var from: String
        public var value: String

        public init(from: String, value: String) {
            self.from = from
            self.value = value
        }
    }

    public var id: String
    public var conversations: [Message]

    public init(id: String, conversations: [Message]) {
        self.id = id
        self.conversations = conversations
    }
}

/// Why a ShareGPT file cannot be read at all. Malformed records are not errors: they are
/// skipped and counted (`ShareGPTReader.skippedRecords`).
public enum ShareGPTReaderError: Error, Equatable, Sendable, CustomStringConvertible {
    case cannotOpen(path: String, reason: String)
    case readFailed(path: String, reason: String)
    /// The first non-blank byte is not `[`.
    case notAnArray(path: String, found: UInt8)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let reason): return "cannot open \(path): \(reason)"
        case .readFailed(let path, let reason): return "cannot read \(path): \(reason)"
        case .notAnArray(let path, let found):
            return "\(path) is not a JSON array of ShareGPT records (starts with byte 0x\(String(found, radix: 16)))"
        }
    }
}

/// Streams the records of a ShareGPT JSON file (a top-level array of conversations) one at a
/// time, without decoding the whole file at once.
///
/// The file is read in chunks. A scanner finds each element's extent by tracking whether it
/// is inside a string, after a backslash, and the bracket depth; each complete element is then
/// decoded on its own with `JSONDecoder`. Elements that are not valid records (bad JSON, a
/// missing field, a number where a record belongs) are skipped and counted. When the file ends
/// before the array is closed (the published ShareGPT V3 file is cut off mid-record), the
/// reader returns the complete records it has and reports `truncatedTail`.
///
/// Not thread-safe; one consumer at a time.
public final class ShareGPTReader {
    public let path: String
    /// Complete records decoded and returned so far.
    public private(set) var recordsRead = 0
    /// Complete array elements that were not valid ShareGPT records.
    public private(set) var skippedRecords = 0
    /// The file ended before the array was closed (mid-record or between records).
    public private(set) var truncatedTail = false
    /// Bytes of the incomplete element at the end, when `truncatedTail`.
    public private(set) var tailBytes = 0
    /// The array is closed or the file has ended; `next()` returns nil from now on.
    public private(set) var isFinished = false
    /// Bytes of the file read so far.
    public private(set) var bytesRead = 0

    private let handle: FileHandle
    private let chunkSize: Int
    private var atEOF = false
    private var buffer: [UInt8] = []
    private var pos = 0
    private let decoder = JSONDecoder()

    private enum Phase { case beforeArray, betweenElements, inElement, finished }
    private enum Kind { case container, string, scalar }
    private var phase = Phase.beforeArray
    // State of the element being scanned.
    private var kind = Kind.container
    private var elementStart = 0
    private var depth = 0
    private var inString = false
    private var escaped = false

    /// Opens `path`; `chunkSize` bytes are read at a time (tests use tiny chunks).
    public init(path: String, chunkSize: Int = 1 << 20) throws(ShareGPTReaderError) {
        self.path = path
        self.chunkSize = max(1, chunkSize)
        do {
            handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        } catch {
            throw .cannotOpen(path: path, reason: "\(error.localizedDescription)")
        }
    }

    deinit { try? handle.close() }

    /// Reads every remaining record.
    public func readAll() throws(ShareGPTReaderError) -> [ShareGPTConversation] {
        var out: [ShareGPTConversation] = []
        while let c = try next() { out.append(c) }
        return out
    }

    /// The next valid record, or nil at the end of the array or of the file.
    public func next() throws(ShareGPTReaderError) -> ShareGPTConversation? {
        while true {
            switch phase {
            case .finished:
                return nil
            case .beforeArray:
                guard let b = try peekNonBlank() else { return finish(truncated: true) }
                if b == UInt8(ascii: "[") {
                    pos += 1
                    phase = .betweenElements
                } else if b == 0xEF, try skipByteOrderMark() {
                    continue
                } else {
                    phase = .finished
                    isFinished = true
                    throw .notAnArray(path: path, found: b)
                }
            case .betweenElements:
                guard let b = try peekNonBlank(alsoSkipping: UInt8(ascii: ",")) else { return finish(truncated: true) }
                if b == UInt8(ascii: "]") {
                    pos += 1
                    return finish(truncated: false)
                }
                startElement(first: b)
            case .inElement:
                guard let extent = try scanElement() else {
                    tailBytes = buffer.count - elementStart
                    return finish(truncated: true)
                }
                phase = .betweenElements
                if let record = decode(extent) {
                    recordsRead += 1
                    return record
                }
                skippedRecords += 1
            }
        }
    }

    // MARK: Scanning

    private func finish(truncated: Bool) -> ShareGPTConversation? {
        truncatedTail = truncated
        isFinished = true
        phase = .finished
        buffer = []
        pos = 0
        return nil
    }

    /// Makes `buffer[pos]` available; false at the end of the file. Drops consumed bytes
    /// (everything before the element being scanned) before reading more.
    private func fill() throws(ShareGPTReaderError) -> Bool {
        if pos < buffer.count { return true }
        if atEOF { return false }
        let keepFrom = phase == .inElement ? elementStart : pos
        if keepFrom > 0 {
            buffer.removeFirst(keepFrom)
            pos -= keepFrom
            if phase == .inElement { elementStart = 0 }
        }
        let chunk: Data?
        do {
            chunk = try handle.read(upToCount: chunkSize)
        } catch {
            throw .readFailed(path: path, reason: "\(error.localizedDescription)")
        }
        guard let chunk, !chunk.isEmpty else {
            atEOF = true
            return false
        }
        bytesRead += chunk.count
        buffer.append(contentsOf: chunk)
        return true
    }

    private static func isBlank(_ b: UInt8) -> Bool {
        b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09
    }

    /// Skips blanks (and `extra`), returns the next byte without consuming it; nil at EOF.
    private func peekNonBlank(alsoSkipping extra: UInt8? = nil) throws(ShareGPTReaderError) -> UInt8? {
        while try fill() {
            let b = buffer[pos]
            if Self.isBlank(b) || b == extra {
                pos += 1
            } else {
                return b
            }
        }
        return nil
    }

    /// Consumes a UTF-8 byte order mark at `pos` if there is one.
    private func skipByteOrderMark() throws(ShareGPTReaderError) -> Bool {
        let bom: [UInt8] = [0xEF, 0xBB, 0xBF]
        let start = pos
        for expected in bom {
            guard try fill(), buffer[pos] == expected else {
                pos = start
                return false
            }
            pos += 1
        }
        return true
    }

    private func startElement(first b: UInt8) {
        phase = .inElement
        elementStart = pos
        depth = 0
        inString = false
        escaped = false
        switch b {
        case UInt8(ascii: "{"), UInt8(ascii: "["): kind = .container
        case UInt8(ascii: "\""): kind = .string
        default: kind = .scalar
        }
    }

    /// Scans from `pos` to the end of the current element; returns its byte range in `buffer`
    /// (valid until the next `fill`), or nil when the file ends first.
    private func scanElement() throws(ShareGPTReaderError) -> Range<Int>? {
        let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\")
        let openBrace = UInt8(ascii: "{"), openBracket = UInt8(ascii: "[")
        let closeBrace = UInt8(ascii: "}"), closeBracket = UInt8(ascii: "]"), comma = UInt8(ascii: ",")
        while try fill() {
            var depth = self.depth, inString = self.inString, escaped = self.escaped
            let kind = self.kind, elementStart = self.elementStart
            var end: Int? = nil
            var i = pos
            buffer.withUnsafeBufferPointer { buf in
                let n = buf.count
                if kind == .scalar {
                    // A bare value where a record belongs: runs to the next delimiter. Its first
                    // byte is never a delimiter, so at least one byte is consumed.
                    while i < n {
                        let b = buf[i]
                        if i > elementStart && (b == comma || b == closeBracket || Self.isBlank(b)) {
                            end = i
                            return
                        }
                        i += 1
                    }
                    return
                }
                while i < n {
                    let b = buf[i]
                    i += 1
                    if inString {
                        if escaped {
                            escaped = false
                        } else if b == backslash {
                            escaped = true
                        } else if b == quote {
                            inString = false
                            if kind == .string {
                                end = i
                                return
                            }
                        }
                    } else if b == quote {
                        inString = true
                    } else if b == openBrace || b == openBracket {
                        depth += 1
                    } else if b == closeBrace || b == closeBracket {
                        depth -= 1
                        if depth <= 0 {
                            end = i
                            return
                        }
                    }
                }
            }
            self.depth = depth
            self.inString = inString
            self.escaped = escaped
            if let end {
                pos = end
                return elementStart..<end
            }
            pos = i
        }
        return nil
    }

    private func decode(_ extent: Range<Int>) -> ShareGPTConversation? {
        guard kind == .container, buffer[extent.lowerBound] == UInt8(ascii: "{") else { return nil }
        return try? decoder.decode(ShareGPTConversation.self, from: Data(buffer[extent]))
    }
}
