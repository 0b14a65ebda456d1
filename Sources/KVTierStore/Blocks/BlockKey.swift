/// Names one block: one layer's keys and values for tokens [start, start + count) of one session,
/// computed by one model.
public struct BlockKey: Hashable, Sendable, CustomStringConvertible, Comparable {
    public var model: ModelFingerprint
    public var session: String
    public var layer: Int
    public var start: Int
    public var count: Int

    public init(model: ModelFingerprint, session: String, layer: Int, start: Int, count: Int) {
        self.model = model
        self.session = session
        self.layer = layer
        self.start = start
        self.count = count
    }

    public var tokens: Range<Int> { start..<(start + count) }

    public var description: String { "\(session)/L\(layer)/[\(start),\(start + count))@\(model)" }

    public static func < (a: BlockKey, b: BlockKey) -> Bool {
        (a.session, a.layer, a.start, a.model.value) < (b.session, b.layer, b.start, b.model.value)
    }
}
