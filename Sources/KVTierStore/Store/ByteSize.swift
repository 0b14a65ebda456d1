import Foundation

/// Sizes as people write them, in configuration files and on command lines.
public enum ByteSize {
    /// "512MiB", "4GiB", "20GB", "1.5 GiB", "1048576" -> bytes; nil for anything else (negative,
    /// too large for an Int, not a number, an unknown unit).
    public static func parse(_ s: String) -> Int? {
        let t = s.trimmingCharacters(in: .whitespaces)
        let units: [(String, Double)] = [
            ("KiB", 1024), ("MiB", 1_048_576), ("GiB", 1_073_741_824), ("TiB", 1_099_511_627_776),
            ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("B", 1),
        ]
        for (suffix, factor) in units where t.hasSuffix(suffix) {
            guard let n = Double(t.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), n > 0 else {
                return nil
            }
            // "1e30GiB" or "infGiB" would trap in Int(_:); they are not sizes.
            let bytes = n * factor
            guard bytes < 0x1p63 else { return nil }
            return Int(bytes)
        }
        return Int(t)
    }
}
