import Foundation

/// The part of TOML a flat configuration file needs: `[section]` headers, `key = value` lines
/// with strings ("…", with \" \\ \n \t escapes), integers (with _ separators), floats and
/// booleans, and `#` comments. Anything else is an error that names the line.
enum TOMLSubset {
    enum Value: Equatable, Sendable {
        case string(String)
        case integer(Int)
        case float(Double)
        case bool(Bool)
    }

    struct ParseError: Error, CustomStringConvertible, Equatable {
        let line: Int
        let message: String
        var description: String { "line \(line): \(message)" }
    }

    /// Entries as "section.key" -> (value, line), in file order.
    static func parse(_ text: String) throws(ParseError) -> [(key: String, value: Value, line: Int)] {
        var out: [(String, Value, Int)] = []
        var section = ""
        var seen = Set<String>()
        for (i, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let n = i + 1
            let line = stripComment(String(rawLine)).trimmingCharacters(in: .whitespaces)
            if line.isEmpty { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]"), !line.hasPrefix("[["), line.count > 2 else {
                    throw ParseError(line: n, message: "malformed section header \(line)")
                }
                section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                guard isBareKey(section) else { throw ParseError(line: n, message: "malformed section name '\(section)'") }
                continue
            }
            guard let eq = line.firstIndex(of: "=") else { throw ParseError(line: n, message: "expected key = value") }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces)
            let rawValue = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            guard isBareKey(key) else { throw ParseError(line: n, message: "malformed key '\(key)'") }
            let full = section.isEmpty ? key : section + "." + key
            guard seen.insert(full).inserted else { throw ParseError(line: n, message: "key '\(full)' is set twice") }
            out.append((full, try value(rawValue, line: n, key: full), n))
        }
        return out.map { (key: $0.0, value: $0.1, line: $0.2) }
    }

    private static func isBareKey(_ s: String) -> Bool {
        !s.isEmpty && s.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }
    }

    /// Drops a `#` comment that is not inside a string.
    private static func stripComment(_ s: String) -> String {
        var inString = false
        var escaped = false
        var out = ""
        for c in s {
            if inString {
                if escaped { escaped = false } else if c == "\\" { escaped = true } else if c == "\"" { inString = false }
            } else if c == "\"" {
                inString = true
            } else if c == "#" {
                break
            }
            out.append(c)
        }
        return out
    }

    private static func value(_ raw: String, line: Int, key: String) throws(ParseError) -> Value {
        if raw == "true" { return .bool(true) }
        if raw == "false" { return .bool(false) }
        if raw.hasPrefix("\"") {
            guard raw.count >= 2, raw.hasSuffix("\"") else { throw ParseError(line: line, message: "unterminated string for '\(key)'") }
            var out = ""
            var escaped = false
            for c in raw.dropFirst().dropLast() {
                if escaped {
                    switch c {
                    case "n": out.append("\n")
                    case "t": out.append("\t")
                    case "\"": out.append("\"")
                    case "\\": out.append("\\")
                    default: throw ParseError(line: line, message: "unknown escape \\\(c) in '\(key)'")
                    }
                    escaped = false
                } else if c == "\\" {
                    escaped = true
                } else if c == "\"" {
                    throw ParseError(line: line, message: "unexpected quote inside the string for '\(key)'")
                } else {
                    out.append(c)
                }
            }
            guard !escaped else { throw ParseError(line: line, message: "dangling backslash in '\(key)'") }
            return .string(out)
        }
        let digits = raw.replacingOccurrences(of: "_", with: "")
        if let i = Int(digits) { return .integer(i) }
        if let d = Double(digits), d.isFinite { return .float(d) }
        throw ParseError(line: line, message: "cannot read the value of '\(key)': \(raw) (strings need quotes)")
    }
}
