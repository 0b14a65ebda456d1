/// All weights of a llama model, checked against its config, pointing into the GGUF mapping.
public struct LlamaWeights: Sendable {
    public struct Layer: Sendable {
        let attnNorm: NormWeight
        let wq: WeightMatrix, wk: WeightMatrix, wv: WeightMatrix, wo: WeightMatrix
        let ffnNorm: NormWeight
        let gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix
    }

    let tokenEmbedding: WeightMatrix
    /// The output projection: `output.weight`, or the token embedding when tied.
    let output: WeightMatrix
    let outputNorm: NormWeight
    let layers: [Layer]
    /// Whether every linear layer, the output projection included, is on the quantized-activation
    /// path (whose kernel computes each row on its own): what batch invariance needs.
    var allTakeQuantizedActivations: Bool {
        output.takesQuantizedActivations
            && layers.allSatisfy { l in
                [l.wq, l.wk, l.wv, l.wo, l.gate, l.up, l.down].allSatisfy(\.takesQuantizedActivations)
            }
    }
    /// Keeps the mapping alive for the raw pointers above.
    let file: GGUFFile

    public init(file: GGUFFile, config c: LlamaConfig) throws(GGUFError) {
        self.file = file
        tokenEmbedding = try WeightMatrix(
            file: file, name: "token_embd.weight", rows: c.vocabularySize, cols: c.embeddingLength)
        if file.tensor("output.weight") != nil {
            output = try WeightMatrix(
                file: file, name: "output.weight", rows: c.vocabularySize, cols: c.embeddingLength)
        } else {
            output = tokenEmbedding
        }
        outputNorm = try NormWeight(file: file, name: "output_norm.weight", count: c.embeddingLength)
        var layers: [Layer] = []
        for l in 0..<c.layerCount {
            let p = "blk.\(l)."
            let e = c.embeddingLength
            let f = c.feedForwardLength
            layers.append(
                Layer(
                    attnNorm: try NormWeight(file: file, name: p + "attn_norm.weight", count: e),
                    wq: try WeightMatrix(file: file, name: p + "attn_q.weight", rows: c.headCount * c.headDim, cols: e),
                    wk: try WeightMatrix(file: file, name: p + "attn_k.weight", rows: c.kvWidth, cols: e),
                    wv: try WeightMatrix(file: file, name: p + "attn_v.weight", rows: c.kvWidth, cols: e),
                    wo: try WeightMatrix(
                        file: file, name: p + "attn_output.weight", rows: e, cols: c.headCount * c.headDim),
                    ffnNorm: try NormWeight(file: file, name: p + "ffn_norm.weight", count: e),
                    gate: try WeightMatrix(file: file, name: p + "ffn_gate.weight", rows: f, cols: e),
                    up: try WeightMatrix(file: file, name: p + "ffn_up.weight", rows: f, cols: e),
                    down: try WeightMatrix(file: file, name: p + "ffn_down.weight", rows: e, cols: f)
                ))
        }
        self.layers = layers
    }
}
