/// Failures of the tiered store, each with what to do about it.
public enum StoreError: Error, Sendable, CustomStringConvertible {
    case hbmFull(neededPages: Int, freePages: Int)
    case blockShape(BlockKey, String)
    case notInHBM(BlockKey)
    case disk(DiskTierError)
    case arena(HBMArenaError)
    case dramTooSmall(blockBytes: Int, capacity: Int)

    public var description: String {
        switch self {
        case .hbmFull(let needed, let free):
            return "HBM arena is full: \(needed) pages needed, \(free) free, and every resident session is in use; finish or release a session and retry"
        case .blockShape(let key, let why):
            return "block \(key) does not fit the store: \(why)"
        case .notInHBM(let key):
            return "block \(key) is not in HBM; admit it before saving"
        case .disk(let e):
            return e.description
        case .arena(let e):
            return e.description
        case .dramTooSmall(let bytes, let capacity):
            return "a \(bytes)-byte block cannot fit the \(capacity)-byte DRAM tier; raise the DRAM capacity"
        }
    }
}
