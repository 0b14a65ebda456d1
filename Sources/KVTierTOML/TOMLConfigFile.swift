import Foundation
import TOMLKit

/// A configuration file (kvtierd's, or a cost profile of `kvtier-bench simulate`) as TOML 1.0,
/// parsed by TOMLKit (toml++): every form TOML allows loads
/// (single-quoted and multi-line strings, dotted keys, inline tables, `[a.b]` headers), and a
/// syntax error names its line and column. The tables are flattened to dotted keys
/// ("server.socket") with the line each was written on, so that a bad value's error can point
/// at it too.
public enum TOMLConfigFile {
    public enum Value: Equatable, Sendable {
        case string(String)
        case integer(Int)
        case float(Double)
        case bool(Bool)
        /// An array of strings (`store.remote.seeds`).
        case strings([String])
        /// Another array, a date or time: no key takes one; the setter's error says what it wants.
        case other(String)
    }

    public struct Entry: Equatable, Sendable {
        public let key: String
        public let value: Value
        /// The line the key was written on; nil where it cannot be told (an inline table).
        public let line: Int?
    }

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let line: Int
        public let column: Int
        public let message: String
        public var description: String { "line \(line), column \(column): \(message)" }
    }

    /// The entries of `text`, in the order of their lines.
    public static func parse(_ text: String) throws(ParseError) -> [Entry] {
        try preflight(text)
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let e as TOMLParseError {
            throw ParseError(line: e.source.begin.line, column: e.source.begin.column, message: e.description)
        } catch {
            throw ParseError(line: 1, column: 1, message: "\(error)")
        }
        var flat: [(String, TOMLValue)] = []
        flatten(table, prefix: "", into: &flat)
        let locator = KeyLocator(text)
        let entries = flat.map { key, value in Entry(key: key, value: convert(value), line: locator.line(of: key)) }
        return entries.sorted { ($0.line ?? .max, $0.key) < ($1.line ?? .max, $1.key) }
    }

    /// Refuses, with a parse error, the two kinds of input on which toml++ 3.4.0 (in TOMLKit
    /// 0.6.0) asserts instead of reporting an error: a character beyond ASCII outside strings
    /// and comments (TOML allows none there), and a table header whose name does not start with
    /// a key character (`[\\x]`). An assertion aborts a build that keeps them, and a build that
    /// drops them turns them into assumptions the parser then breaks; found by the toml-config
    /// fuzzer. Everything else is left to TOMLKit.
    public static func preflight(_ text: String) throws(ParseError) {
        enum State { case normal, comment, basic, literal, multiBasic, multiLiteral }
        var state = State.normal
        var line = 1
        var column = 0
        /// Inside a value (after `=`), with `depth` brackets and braces open: a `[` there is an
        /// array, not a table header.
        var inValue = false
        var depth = 0
        var lineStart = true
        let scalars = Array(text.unicodeScalars)
        var i = 0
        func at(_ k: Int, _ c: Unicode.Scalar) -> Bool { k < scalars.count && scalars[k] == c }
        func isSpace(_ k: Int) -> Bool { at(k, " ") || at(k, "\t") }
        func startsKey(_ k: Int) -> Bool {
            guard k < scalars.count else { return true }  // the end: toml++ reports it
            let c = scalars[k]
            return c.properties.isASCIIHexDigit || ("a"..."z").contains(c) || ("A"..."Z").contains(c)
                || c == "_" || c == "-" || c == "\"" || c == "'" || c == "]"
        }
        while i < scalars.count {
            let c = scalars[i]
            column += 1
            if c == "\n" {
                line += 1
                column = 0
                lineStart = true
                if state == .comment || state == .basic || state == .literal { state = .normal }
                if inValue && depth <= 0 { inValue = false }
                i += 1
                continue
            }
            switch state {
            case .normal:
                guard c.isASCII else {
                    throw ParseError(
                        line: line, column: column,
                        message: "'\(c)' outside a string or comment: keys are ASCII "
                            + "(quote the key if it must be otherwise)")
                }
                if lineStart && c == "[" && !inValue {
                    var k = i + 1
                    while isSpace(k) { k += 1 }
                    if at(k, "[") { k += 1 }
                    while isSpace(k) { k += 1 }
                    guard startsKey(k) else {
                        throw ParseError(
                            line: line, column: column + (k - i),
                            message: "a table name must start with a key character or a quote")
                    }
                }
                if c != " " && c != "\t" && c != "\r" { lineStart = false }
                if inValue {
                    if c == "[" || c == "{" { depth += 1 }
                    if c == "]" || c == "}" { depth -= 1 }
                } else if c == "=" {
                    inValue = true
                    depth = 0
                }
                if c == "#" {
                    state = .comment
                } else if c == "\"" {
                    if at(i + 1, "\"") && at(i + 2, "\"") {
                        state = .multiBasic
                        i += 2
                        column += 2
                    } else {
                        state = .basic
                    }
                } else if c == "'" {
                    if at(i + 1, "'") && at(i + 2, "'") {
                        state = .multiLiteral
                        i += 2
                        column += 2
                    } else {
                        state = .literal
                    }
                }
            case .comment:
                break
            case .basic, .multiBasic:
                if c == "\\" {
                    i += 1  // the escaped character, whatever it is
                    column += 1
                } else if c == "\"" {
                    if state == .basic {
                        state = .normal
                    } else if at(i + 1, "\"") && at(i + 2, "\"") {
                        state = .normal
                        i += 2
                        column += 2
                    }
                }
            case .literal:
                if c == "'" { state = .normal }
            case .multiLiteral:
                if c == "'" && at(i + 1, "'") && at(i + 2, "'") {
                    state = .normal
                    i += 2
                    column += 2
                }
            }
            i += 1
        }
    }

    private static func flatten(_ table: TOMLTable, prefix: String, into out: inout [(String, TOMLValue)]) {
        for key in table.keys {
            guard let value = table[key]?.tomlValue else { continue }
            let path = prefix.isEmpty ? key : prefix + "." + key
            if value.type == .table, let inner = value.table {
                flatten(inner, prefix: path, into: &out)
            } else {
                out.append((path, value))
            }
        }
    }

    private static func convert(_ v: TOMLValue) -> Value {
        switch v.type {
        case .string: return v.string.map(Value.string) ?? .other("a string")
        case .int: return v.int.map(Value.integer) ?? .other("an integer")
        case .double: return v.double.map(Value.float) ?? .other("a float")
        case .bool: return v.bool.map(Value.bool) ?? .other("a boolean")
        case .array:
            guard let a = v.array else { return .other("an array") }
            let strings = a.compactMap { $0.string }
            return strings.count == a.count ? .strings(strings) : .other("an array of non-strings")
        case .table: return .other("a table")
        case .date, .time, .dateTime: return .other("a date or time")
        }
    }

    /// Finds the line of a dotted key in a file TOMLKit has already accepted: the current
    /// `[table]` header plus the (possibly dotted, possibly quoted) key left of `=`.
    private struct KeyLocator {
        private var lines: [String: Int] = [:]

        init(_ text: String) {
            var table = ""
            var lineNumber = 0
            for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
                lineNumber += 1
                let line = raw.trimmingCharacters(in: .whitespaces)
                if line.hasPrefix("[") && !line.hasPrefix("[[") {
                    if let close = line.lastIndex(of: "]") {
                        table = Self.normalize(line[line.index(after: line.startIndex)..<close])
                    }
                } else if let eq = line.firstIndex(of: "="), !line.hasPrefix("#") {
                    let key = Self.normalize(line[..<eq])
                    let full = table.isEmpty ? key : table + "." + key
                    if lines[full] == nil { lines[full] = lineNumber }
                }
            }
        }

        func line(of key: String) -> Int? { lines[key] }

        /// `a . "b" . 'c'` -> `a.b.c`.
        private static func normalize(_ s: Substring) -> String {
            s.split(separator: ".").map {
                $0.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
            }.joined(separator: ".")
        }
    }
}
