/// Which HBM page holds each resident block, with the blocks of each store namespace indexed,
/// so that what a session has in HBM is found without walking every resident page (an arena of
/// tens of thousands of pages is walked by nothing on a turn's path).
///
/// A value type: `TieredStore` keeps one under its `lock`.
struct HBMPageTable {
    private var pages: [BlockKey: PageID] = [:]
    private var bySession: [String: Set<BlockKey>] = [:]

    subscript(key: BlockKey) -> PageID? {
        get { pages[key] }
        set {
            if let newValue {
                pages[key] = newValue
                bySession[key.session, default: []].insert(key)
            } else {
                removeValue(forKey: key)
            }
        }
    }

    @discardableResult
    mutating func removeValue(forKey key: BlockKey) -> PageID? {
        guard let page = pages.removeValue(forKey: key) else { return nil }
        bySession[key.session]?.remove(key)
        if bySession[key.session]?.isEmpty == true { bySession[key.session] = nil }
        return page
    }

    /// The resident blocks of store namespace `session`.
    func keys(session: String) -> Set<BlockKey> { bySession[session] ?? [] }

    /// Namespaces with at least one resident block.
    var sessions: Dictionary<String, Set<BlockKey>>.Keys { bySession.keys }

    var count: Int { pages.count }
}
