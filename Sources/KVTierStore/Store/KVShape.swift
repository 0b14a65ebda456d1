/// The shape of the KV the store holds, as much of the model's KV layout as the store needs:
/// the layers, and the elements of keys (or of values) per token and layer. The engine makes it
/// from the model (`KVShape(layout:)` in KVTierEngine), so the store does not depend on the model.
public struct KVShape: Sendable, Equatable, Hashable {
    public var layers: Int
    public var rowWidth: Int

    public init(layers: Int, rowWidth: Int) {
        self.layers = layers
        self.rowWidth = rowWidth
    }
}
