import KVTierModel
import KVTierStore

// What the store needs to know of the loaded model, made here so that KVTierStore does not
// depend on KVTierModel: the model's fingerprint, the KV shape, and a store for a KV layout.

extension ModelFingerprint {
    /// Fingerprint of a loaded model: hashes the architecture, the config and all tensor data.
    public init(model: LlamaModel) {
        var h = Hasher64()
        h.combine(bytes: Array("llama".utf8))
        let c = model.config
        for v in [
            c.layerCount, c.embeddingLength, c.feedForwardLength, c.headCount, c.kvHeadCount, c.headDim,
            c.vocabularySize,
        ] {
            h.combine(UInt64(v))
        }
        h.combine(UInt64(c.ropeFreqBase.bitPattern))
        for t in model.file.tensors {
            h.combine(bytes: Array(t.name.utf8))
            h.combine(UInt64(t.type.rawValue))
        }
        let data = model.file.bytes
        h.combine(words: UnsafeRawBufferPointer(rebasing: data[model.file.dataOffset...]))
        self.init(value: h.value)
    }
}

extension KVShape {
    /// The store's view of the model's KV layout.
    public init(layout: KVLayout) { self.init(layers: layout.layers, rowWidth: layout.rowWidth) }
}

extension TieredStore {
    /// A store for the KV of a model with this layout (see the designated initializer).
    public convenience init(
        configuration: StoreConfiguration, model: ModelFingerprint, layout: KVLayout, elementType: KVElementType = .f16
    ) throws(StoreError) {
        try self.init(
            configuration: configuration, model: model, shape: KVShape(layout: layout), elementType: elementType)
    }
}
