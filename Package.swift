// swift-tools-version:6.0
// KVTier: a tiered KV-cache store for multi-turn LLM serving (CachedAttention).
// Module map: docs/architecture.md.
import PackageDescription

let package = Package(
    name: "KVTier",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "kvtierd", targets: ["kvtierd"]),
        .executable(name: "kvtierctl", targets: ["kvtierctl"]),
        .executable(name: "kvtier-bench", targets: ["kvtier-bench"]),
        .library(name: "KVTierModel", targets: ["KVTierModel"]),
        .library(name: "KVTierStore", targets: ["KVTierStore"]),
        .library(name: "KVTierEngine", targets: ["KVTierEngine"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.65.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // C libraries, through pkg-config (Debian: librocksdb-dev, liblz4-dev, libopenblas-dev).
        .systemLibrary(name: "CRocksDB", pkgConfig: "rocksdb", providers: [.apt(["librocksdb-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(name: "CLibEdit", pkgConfig: "libedit", providers: [.apt(["libedit-dev"])]),
        // Our own SIMD kernels (quantized dot products, conversions) with run-time CPU dispatch.
        .target(
            name: "CKVTierKernels",
            cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])]
        ),
        // The version and the commit a binary was built from (git describe, by the plugin).
        .target(name: "KVTierBuildInfo", plugins: ["BuildInfoPlugin"]),
        .plugin(name: "BuildInfoPlugin", capability: .buildTool(), path: "Sources/BuildInfoPlugin"),
        // The API's JSON bodies, shared by kvtierd and kvtierctl (Foundation only).
        .target(name: "KVTierAPI"),
        // Byte-level BPE tokenizer; knows nothing about GGUF.
        .target(name: "KVTierTokenizer"),
        // GGUF reader, chat template, transformer, sampler.
        .target(name: "KVTierModel", dependencies: ["KVTierTokenizer", "CKVTierKernels", "COpenBLAS"]),
        // A Redis Cluster client of our own (RESP over TCP, slot routing, redirections).
        .target(name: "KVTierRedis"),
        // Tiered KV store (HBM arena, DRAM, RocksDB disk, the remote tier on a Redis Cluster).
        .target(name: "KVTierStore", dependencies: ["CKVTierKernels", "CLZ4", "CRocksDB", "KVTierRedis"]),
        // Sessions, scheduler, generation on top of model and store.
        .target(name: "KVTierEngine", dependencies: ["KVTierModel", "KVTierStore"]),
        // The ShareGPT replay harness: workloads, policies, the run and its summary (kvtier-bench replay).
        .target(name: "KVTierReplay", dependencies: ["KVTierEngine", "KVTierModel", "KVTierStore"]),
        // TOML files (kvtierd's configuration, the simulator's cost profiles), flattened to dotted keys.
        .target(name: "KVTierTOML", dependencies: [.product(name: "TOMLKit", package: "TOMLKit")]),
        // A discrete-event model of GPU serving with the scheduler's rules and the store's policies
        // (kvtier-bench simulate).
        .target(
            name: "KVTierSimulator",
            dependencies: ["KVTierEngine", "KVTierModel", "KVTierStore", "KVTierReplay", "KVTierTOML"]),
        // HTTP/1.1 over a Unix domain socket in front of the engine.
        .target(
            name: "KVTierServer",
            dependencies: [
                "KVTierEngine", "KVTierStore", "KVTierAPI", "KVTierBuildInfo", "KVTierTOML", "CSystemd",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "kvtierd",
            dependencies: [
                "KVTierEngine", "KVTierModel", "KVTierStore", "KVTierServer", "KVTierBuildInfo",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "kvtierctl",
            dependencies: [
                "KVTierEngine", "KVTierModel", "KVTierAPI", "KVTierBuildInfo", "CLibEdit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "kvtier-bench",
            dependencies: [
                "KVTierEngine", "KVTierModel", "KVTierStore", "KVTierReplay", "KVTierSimulator", "KVTierBuildInfo",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "KVTierTokenizerTests", dependencies: ["KVTierTokenizer", "KVTierModel"]),
        // What the model and engine tests share: tiny GGUF models the tests write themselves, the
        // real model where `make` puts it (no product links it).
        .target(name: "KVTierTestSupport", dependencies: ["KVTierModel"], path: "Tests/KVTierTestSupport"),
        .testTarget(
            name: "KVTierModelTests",
            dependencies: ["KVTierModel", "KVTierEngine", "KVTierStore", "KVTierTestSupport"],
            exclude: ["Golden", "Reference"]),
        .testTarget(
            name: "KVTierEngineTests",
            dependencies: ["KVTierEngine", "KVTierModel", "KVTierStore", "KVTierReplay", "KVTierTestSupport"]),
        .testTarget(
            name: "KVTierSimulatorTests",
            dependencies: [
                "KVTierSimulator", "KVTierEngine", "KVTierModel", "KVTierReplay", "KVTierStore", "KVTierTestSupport",
            ]),
        .testTarget(name: "KVTierRedisTests", dependencies: ["KVTierRedis", "KVTierTestSupport"]),
        .testTarget(
            name: "KVTierStoreTests", dependencies: ["KVTierStore", "KVTierModel", "KVTierRedis", "KVTierTestSupport"]),
        .testTarget(
            name: "KVTierServerTests", dependencies: ["KVTierServer", "KVTierTestSupport"], exclude: ["Scripts"]),
    ],
    swiftLanguageModes: [.v6]
)
