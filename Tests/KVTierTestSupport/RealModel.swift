import Foundation
import KVTierModel

// `swift build` builds this target too (release builds against the static runtime, which has no
// XCTest): it compiles there without the skip, and the tests, which have XCTest, get it.
#if canImport(XCTest)
import XCTest
#endif

/// Where `make setup` puts the real model and the committed golden data, relative to this file.
enum RealModel {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let modelPath = packageRoot.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
    static let goldenDirectory = packageRoot.appendingPathComponent("Tests/KVTierModelTests/Golden")

    /// Loads the real model once per process; skips the test when absent outside CI.
    static func load() throws -> LlamaModel {
        guard FileManager.default.fileExists(atPath: modelPath) else {
            #if canImport(XCTest)
            if ProcessInfo.processInfo.environment["CI"] != nil {
                XCTFail("the model is missing at \(modelPath); `make setup` fetches it")
            }
            throw XCTSkip("model not found at \(modelPath); run `make setup`")
            #else
            throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: modelPath])
            #endif
        }
        return try cache.get()
    }

    private static let cache = ModelCache()

    static func golden<T: Decodable>(_ name: String, as: T.Type) throws -> T {
        let data = try Data(contentsOf: goldenDirectory.appendingPathComponent(name))
        return try JSONDecoder().decode(T.self, from: data)
    }
}

private final class ModelCache: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var model: LlamaModel?

    func get() throws -> LlamaModel {
        lock.lock()
        defer { lock.unlock() }
        if let model { return model }
        let m = try LlamaModel(path: RealModel.modelPath)
        model = m
        return m
    }
}
