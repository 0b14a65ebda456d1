import Foundation

/// How kvtierd and kvtierctl write and read the API's JSON: keys in snake case on the wire
/// (`cached_tokens`, as OpenAI's API does) from camel-case Swift properties, sorted so that a
/// body is the same bytes every time. Both sides use these two, so they cannot disagree.
public enum APIJSON {
    public static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }

    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }

    public static func encode<T: Encodable>(_ value: T) throws -> [UInt8] { Array(try encoder().encode(value)) }

    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        try decoder().decode(type, from: data)
    }
}
