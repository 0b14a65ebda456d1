import Foundation

/// Decodes a request body with `JSONDecoder`, after checking how deeply it nests.
///
/// Why the check: Foundation's JSON scanner (swift-foundation as shipped with Swift 6.3.1) traps
/// (SIGILL, in `JSONError.SourceLocation.sourceLocation(at:fullSource:)`) on a text that ends right
/// after its 513th nested `[` or `{`, where it should report its nesting limit (512). A client
/// could stop the daemon with a 530-byte body. No request of ours needs more than a few levels,
/// so bodies nesting deeper than `maxDepth` are refused before Foundation sees them.
enum RequestJSON {
    /// Deepest nesting of arrays and objects accepted (unknown fields included).
    static let maxDepth = 64

    /// Why a body was refused before decoding.
    struct TooDeep: Error, CustomStringConvertible {
        var description: String { "arrays and objects nest more than \(RequestJSON.maxDepth) levels deep" }
    }

    static func decode<T: Decodable>(_ type: T.Type, from body: [UInt8]) throws -> T {
        guard nestingDepth(body, stopAfter: maxDepth) <= maxDepth else { throw TooDeep() }
        return try JSONDecoder().decode(type, from: Data(body))
    }

    /// The deepest nesting of `[`/`{` outside strings, counted up to `stopAfter + 1`. Does not
    /// validate: malformed JSON is left to the decoder.
    static func nestingDepth(_ bytes: [UInt8], stopAfter limit: Int) -> Int {
        var depth = 0
        var deepest = 0
        var inString = false
        var escaped = false
        for b in bytes {
            if inString {
                if escaped {
                    escaped = false
                } else if b == UInt8(ascii: "\\") {
                    escaped = true
                } else if b == UInt8(ascii: "\"") {
                    inString = false
                }
                continue
            }
            switch b {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth > deepest {
                    deepest = depth
                    if deepest > limit { return deepest }
                }
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth = max(0, depth - 1)
            default: break
            }
        }
        return deepest
    }
}
