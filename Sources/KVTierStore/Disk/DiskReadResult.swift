/// The outcome of reading one block from the disk tier.
public enum DiskReadResult: Sendable {
    /// The block, with its checksum verified.
    case hit(KVBlock)
    /// No such block (never stored, deleted, stored for another model, or unreadable because of
    /// an I/O error, which `DiskTierStats.readErrors` counts).
    case miss
    /// The block was there but damaged; it has been deleted and counted. Treat it as a miss.
    case corrupt(reason: String)

    /// The block of a hit, nil otherwise.
    public var block: KVBlock? {
        if case .hit(let b) = self { return b }
        return nil
    }
}
