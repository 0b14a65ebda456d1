import Foundation
import XCTest

@testable import KVTierModel

/// Fuzz target `gguf-header`: mutated tiny GGUF files through the model library's own reader
/// (`GGUFFile`), then the llama configuration and weight table built from them (`LlamaConfig`,
/// `LlamaWeights`). Every file opens or fails with a `GGUFError`; an opened file's tensors lie
/// inside it.
final class GGUFHeaderFuzzTests: XCTestCase {
    /// A tiny GGUF v3 file, split into its header (metadata and tensor infos, padded to 32)
    /// and its tensor data. Norms are F32, matrices Q8_0 (34 bytes per 32 elements).
    static func gguf(metadata: [(String, UInt32, [UInt8])], tensors: [(String, [Int])]) -> (header: [UInt8], data: [UInt8]) {
        func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
        func u64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
        func str(_ s: String) -> [UInt8] { u64(UInt64(s.utf8.count)) + Array(s.utf8) }
        var header = Array("GGUF".utf8) + u32(3) + u64(UInt64(tensors.count)) + u64(UInt64(metadata.count))
        for (key, type, value) in metadata { header += str(key) + u32(type) + value }
        var data: [UInt8] = []
        for (name, dims) in tensors {
            let elements = dims.reduce(1, *)
            let (type, bytes): (UInt32, Int) = dims.count == 1 ? (0, 4 * elements) : (8, elements / 32 * 34)
            header += str(name) + u32(UInt32(dims.count)) + dims.flatMap { u64(UInt64($0)) } + u32(type) + u64(UInt64(data.count))
            data += (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 31) & 0x3F }
            while data.count % 32 != 0 { data.append(0) }
        }
        while header.count % 32 != 0 { header.append(0) }
        return (header, data)
    }

    /// A one-layer llama (embedding 32, 2 heads, 1 KV head, feed-forward 32, 4 tokens), whole and
    /// with most keys and tensors missing.
    static var corpus: [(header: [UInt8], data: [UInt8])] {
        func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
        func u64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
        func str(_ s: String) -> [UInt8] { u64(UInt64(s.utf8.count)) + Array(s.utf8) }
        let tokens = ["<|im_start|>", "<|im_end|>", "a", "b"]
        let metadata: [(String, UInt32, [UInt8])] = [
            ("general.architecture", 8, str("llama")), ("general.name", 8, str("fuzz")), ("general.alignment", 4, u32(32)),
            ("llama.block_count", 4, u32(1)), ("llama.context_length", 4, u32(64)), ("llama.embedding_length", 4, u32(32)),
            ("llama.feed_forward_length", 4, u32(32)), ("llama.attention.head_count", 4, u32(2)), ("llama.attention.head_count_kv", 4, u32(1)),
            ("llama.rope.freq_base", 6, u32(Float(10000).bitPattern)), ("llama.attention.layer_norm_rms_epsilon", 6, u32(Float(1e-5).bitPattern)),
            ("llama.rope.dimension_count", 4, u32(16)),
            ("tokenizer.ggml.tokens", 9, u32(8) + u64(UInt64(tokens.count)) + tokens.flatMap(str)),
            ("tokenizer.ggml.token_type", 9, u32(5) + u64(4) + [3, 3, 1, 1].flatMap { u32($0) }),
            ("tokenizer.ggml.scores", 9, u32(9) + u64(2) + u32(9) + u64(0) + u32(12) + u64(1) + u64(Double(1.5).bitPattern)),
        ]
        let e = 32, f = 32, kv = 16, v = 4
        let tensors: [(String, [Int])] = [
            ("token_embd.weight", [e, v]), ("output_norm.weight", [e]), ("blk.0.attn_norm.weight", [e]), ("blk.0.attn_q.weight", [e, e]),
            ("blk.0.attn_k.weight", [e, kv]), ("blk.0.attn_v.weight", [e, kv]), ("blk.0.attn_output.weight", [e, e]),
            ("blk.0.ffn_norm.weight", [e]), ("blk.0.ffn_gate.weight", [e, f]), ("blk.0.ffn_up.weight", [e, f]), ("blk.0.ffn_down.weight", [f, e]),
        ]
        return [gguf(metadata: metadata, tensors: tensors), gguf(metadata: Array(metadata.prefix(4)), tensors: Array(tensors.prefix(2)))]
    }

    func testCorpusModelLoads() throws {
        let path = "/dev/shm/kvtier-fuzz-corpus-\(getpid()).gguf"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (header, data) = Self.corpus[0]
        try Data(header + data).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try Self.check(path: path, size: header.count + data.count), "weights")
    }

    func testGGUFHeaderFuzz() throws {
        let corpus = Self.corpus
        let mutator = ByteMutator(corpus: corpus.map { $0.header + $0.data }, formats: [], dictionary: ["GGUF", "llama.", "general.", ".weight"])
        let path = "/dev/shm/kvtier-fuzz-\(getpid()).gguf"
        defer { try? FileManager.default.removeItem(atPath: path) }
        FuzzRunner(target: "gguf-header", quickInputs: 10_000).run(generate: { rng in
            // Mostly the header: mutations in the tensor data change nothing the reader checks.
            let (header, data) = rng.pick(corpus)
            if rng.oneIn(50) { return header + data }
            return rng.oneIn(4) ? mutator.mutated(header + data, &rng) : mutator.mutated(header, &rng) + data
        }) { input, _ in
            try Data(input).write(to: URL(fileURLWithPath: path))
            return try Self.check(path: path, size: input.count)
        }
    }

    static func check(path: String, size: Int) throws -> String {
        let file: GGUFFile
        do {
            file = try GGUFFile(path: path)
        } catch {
            return label(error)
        }
        for t in file.tensors where t.fileOffset < 0 || t.byteCount < 0 || t.fileOffset + t.byteCount > size {
            throw FuzzRunner.Violation("tensor \(t.name) at \(t.fileOffset)+\(t.byteCount) lies outside the \(size)-byte file")
        }
        let config: LlamaConfig
        do {
            config = try LlamaConfig(gguf: file)
        } catch {
            return "file; " + label(error)
        }
        do {
            _ = try LlamaWeights(file: file, config: config)
        } catch {
            return "config; " + label(error)
        }
        return "weights"
    }

    /// The error's kind, without the numbers and names in it.
    static func label(_ error: GGUFError) -> String {
        String(String(describing: error).prefix(while: { $0 != "(" && $0 != "'" && !$0.isNumber }))
    }
}
