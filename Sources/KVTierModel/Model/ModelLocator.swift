#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Finds the model file: an explicit path (the `--model` flag), then `KVTIER_MODEL`, then
/// `models/SmolLM2-135M-Instruct.Q4_1.gguf` under the current directory, where `make setup` puts it.
public enum ModelLocator {
    public static let defaultRelativePath = "models/SmolLM2-135M-Instruct.Q4_1.gguf"

    public static func resolve(flag: String?, environment: [String: String] = currentEnvironment()) -> String {
        if let flag, !flag.isEmpty { return flag }
        if let env = environment["KVTIER_MODEL"], !env.isEmpty { return env }
        return defaultRelativePath
    }

    public static func currentEnvironment() -> [String: String] {
        var out: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") {
                out[String(s[..<eq])] = String(s[s.index(after: eq)...])
            }
            p += 1
        }
        return out
    }
}
