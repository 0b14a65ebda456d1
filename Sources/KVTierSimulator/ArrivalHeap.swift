/// Turns due in virtual time, earliest first (a binary heap; ties by insertion order, so a run is
/// deterministic).
struct ArrivalHeap {
    struct Due {
        var time: Double
        var session: Int
        var turn: Int
        /// Set by `push`.
        var order = 0

        init(time: Double, session: Int, turn: Int) {
            self.time = time
            self.session = session
            self.turn = turn
        }
    }

    private var items: [Due] = []
    private var inserted = 0

    var isEmpty: Bool { items.isEmpty }
    var first: Due? { items.first }

    mutating func push(_ due: Due) {
        var d = due
        d.order = inserted
        inserted += 1
        items.append(d)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard less(items[i], items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Due? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let out = items.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1
            let r = l + 1
            var m = i
            if l < items.count && less(items[l], items[m]) { m = l }
            if r < items.count && less(items[r], items[m]) { m = r }
            guard m != i else { break }
            items.swapAt(i, m)
            i = m
        }
        return out
    }

    private func less(_ a: Due, _ b: Due) -> Bool { (a.time, a.order) < (b.time, b.order) }
}
