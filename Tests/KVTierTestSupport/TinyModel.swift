import Foundation

/// A tiny random llama model written as a GGUF by the tests themselves, so most tests need no download.
/// Vocabulary: 3 control tokens, the 256 byte-level tokens, and a few merges.
struct TinyModel {
    var layers = 2
    var embd = 64
    var heads = 4
    var kvHeads = 2
    var ff = 96
    var context = 256
    var ropeBase: Float = 10000
    var matrixType: UInt32 = 3  // Q4_1, like SmolLM2
    var embeddingType: UInt32 = 8  // Q8_0
    var seed: UInt64 = 7

    static let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    static let merged = [("h", "e"), ("l", "l"), ("Ġ", "t")]

    /// GPT-2's byte-to-unicode table: printable bytes stand for themselves, the rest move to U+0100+.
    static func byteLevelTable() -> [Character] {
        var table = [Character](repeating: " ", count: 256)
        var n = 0
        for b in 0..<256 {
            let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
            if printable {
                table[b] = Character(Unicode.Scalar(UInt8(b)))
            } else {
                table[b] = Character(Unicode.Scalar(UInt32(256 + n))!)
                n += 1
            }
        }
        return table
    }

    static var vocabulary: [String] {
        specials + byteLevelTable().map { String($0) } + merged.map { $0.0 + $0.1 }
    }

    var vocabSize: Int { TinyModel.vocabulary.count }
    var headDim: Int { embd / heads }

    /// Every tensor's stored bytes, by name (so the reference can decode exactly what the file holds).
    func tensors() -> [(name: String, dims: [Int], type: UInt32, values: [Float])] {
        var rng = TestRNG(seed: seed)
        func rand(_ n: Int, _ scale: Float) -> [Float] { (0..<n).map { _ in (rng.nextFloat() * 2 - 1) * scale } }
        func norm(_ n: Int) -> [Float] { (0..<n).map { _ in 1 + (rng.nextFloat() - 0.5) * 0.2 } }
        var t: [(String, [Int], UInt32, [Float])] = []
        t.append(("token_embd.weight", [embd, vocabSize], embeddingType, rand(embd * vocabSize, 1)))
        for l in 0..<layers {
            let p = "blk.\(l)."
            let q = heads * headDim, kv = kvHeads * headDim
            t.append((p + "attn_norm.weight", [embd], 0, norm(embd)))
            t.append((p + "attn_q.weight", [embd, q], matrixType, rand(embd * q, 0.3)))
            t.append((p + "attn_k.weight", [embd, kv], matrixType, rand(embd * kv, 0.3)))
            t.append((p + "attn_v.weight", [embd, kv], matrixType, rand(embd * kv, 0.3)))
            t.append((p + "attn_output.weight", [q, embd], matrixType, rand(q * embd, 0.2)))
            t.append((p + "ffn_norm.weight", [embd], 0, norm(embd)))
            t.append((p + "ffn_gate.weight", [embd, ff], matrixType, rand(embd * ff, 0.3)))
            t.append((p + "ffn_up.weight", [embd, ff], matrixType, rand(embd * ff, 0.3)))
            t.append((p + "ffn_down.weight", [ff, embd], matrixType, rand(ff * embd, 0.2)))
        }
        t.append(("output_norm.weight", [embd], 0, norm(embd)))
        return t.map { (name: $0.0, dims: $0.1, type: $0.2, values: $0.3) }
    }

    func writer() -> GGUFWriter {
        var w = GGUFWriter()
        w.add("general.architecture", .string("llama"))
        w.add("general.name", .string("tiny-test"))
        w.add("llama.block_count", .u32(UInt32(layers)))
        w.add("llama.context_length", .u32(UInt32(context)))
        w.add("llama.embedding_length", .u32(UInt32(embd)))
        w.add("llama.feed_forward_length", .u32(UInt32(ff)))
        w.add("llama.attention.head_count", .u32(UInt32(heads)))
        w.add("llama.attention.head_count_kv", .u32(UInt32(kvHeads)))
        w.add("llama.rope.freq_base", .f32(ropeBase))
        w.add("llama.attention.layer_norm_rms_epsilon", .f32(1e-5))
        w.add("llama.vocab_size", .u32(UInt32(vocabSize)))
        w.add("llama.rope.dimension_count", .u32(UInt32(headDim)))
        w.add("tokenizer.ggml.model", .string("gpt2"))
        w.add("tokenizer.ggml.pre", .string("smollm"))
        w.add("tokenizer.ggml.tokens", .array(8, TinyModel.vocabulary.map { .string($0) }))
        w.add("tokenizer.ggml.token_type", .array(5, TinyModel.vocabulary.indices.map { .i32($0 < 3 ? 3 : 1) }))
        w.add("tokenizer.ggml.merges", .array(8, TinyModel.merged.map { .string("\($0.0) \($0.1)") }))
        w.add("tokenizer.ggml.bos_token_id", .u32(1))
        w.add("tokenizer.ggml.eos_token_id", .u32(2))
        w.add("tokenizer.ggml.add_bos_token", .bool(false))
        w.add(
            "tokenizer.chat_template",
            .string("{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are tiny.<|im_end|>\\n' }}{% endif %}"))
        for t in tensors() { w.addTensor(t.name, dims: t.dims, type: t.type, values: t.values) }
        return w
    }

    /// Writes the model to a fresh temporary file and returns its path.
    func write() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-tests-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let path = dir.appendingPathComponent("tiny-\(seed)-\(matrixType)-\(layers)-\(UUID().uuidString.prefix(8)).gguf").path
        try writer().write(to: path)
        return path
    }
}

/// Deterministic test randomness.
struct TestRNG {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x1234_5678 }
    mutating func next() -> UInt64 {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        var z = state
        z = (z ^ (z >> 33)) &* 0xff51_afd7_ed55_8ccd
        return z ^ (z >> 33)
    }
    mutating func nextFloat() -> Float { Float(next() >> 40) / Float(1 << 24) }
}
