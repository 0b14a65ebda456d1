import ArgumentParser
import KVTierStore

/// A size on the command line, written as the configuration file writes it ("512MiB", "4GiB",
/// "20GB", or bytes).
struct SizeArgument: ExpressibleByArgument, Sendable {
    let bytes: Int

    init(bytes: Int) { self.bytes = bytes }

    var defaultValueDescription: String { "\(bytes)" }

    init?(argument: String) {
        guard let n = ByteSize.parse(argument), n > 0 else { return nil }
        bytes = n
    }

    /// A comma-separated list of sizes ("" for none); throws naming the entry that is not one.
    static func list(_ text: String, option: String) throws -> [Int] {
        try text.split(separator: ",").map { entry in
            guard let n = ByteSize.parse(String(entry)), n > 0 else {
                throw ValidationError("\(option): '\(entry)' is not a size (bytes, or like 512MiB or 4GiB)")
            }
            return n
        }
    }
}
