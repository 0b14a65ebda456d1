/// The BPE merge rules, keyed by pairs of symbol ids, and the merging of one word.
///
/// Every byte string that can take part in merging gets a symbol id: vocabulary tokens
/// (whose text is entirely in byte-level form) use their token id, and strings that occur
/// in merge rules or as single bytes but are not tokens get ids from `vocabularySize` up.
/// A rule `"a b"` with rank `r` becomes `(id(a), id(b)) -> (r, id(ab))`.
struct MergeTable: Sendable {
    /// Number of vocabulary tokens; symbol ids at or above it are not tokens.
    let vocabularySize: Int
    /// The symbol id of each single byte.
    let byteSymbols: [Int32]
    /// `(left << 32 | right)` to `(rank << 32 | result)`.
    private let rules: [UInt64: UInt64]
    /// The raw bytes of the symbols that are not tokens, indexed by `id - vocabularySize`.
    private let extraSymbolBytes: [[UInt8]]
    /// Raw bytes of every byte-level vocabulary token to its id (the last one for duplicates).
    let tokenForBytes: [[UInt8]: Int32]

    /// Builds the table.
    /// - Parameters:
    ///   - tokenBytes: the raw bytes of each token, or nil for tokens not in byte-level form.
    ///   - merges: the merge rules, highest priority first.
    init(tokenBytes: [[UInt8]?], merges: [String]) throws(TokenizerError) {
        vocabularySize = tokenBytes.count
        var ids: [[UInt8]: Int32] = [:]
        ids.reserveCapacity(tokenBytes.count + merges.count / 4)
        for (id, bytes) in tokenBytes.enumerated() {
            if let bytes {
                ids[bytes] = Int32(id)
            }
        }
        let tokenIDs = ids
        var extra: [[UInt8]] = []
        let base = tokenBytes.count

        func intern(_ bytes: [UInt8]) -> Int32 {
            if let id = ids[bytes] {
                return id
            }
            let id = Int32(base + extra.count)
            extra.append(bytes)
            ids[bytes] = id
            return id
        }

        var byteSymbols: [Int32] = []
        byteSymbols.reserveCapacity(256)
        for byte in 0...255 {
            byteSymbols.append(intern([UInt8(byte)]))
        }

        var rules: [UInt64: UInt64] = [:]
        rules.reserveCapacity(merges.count)
        for (rank, line) in merges.enumerated() {
            guard let (left, right) = Self.parseRule(line) else {
                throw TokenizerError(.badMerge(index: rank, line: line))
            }
            // A side outside the byte-level alphabet can never match a symbol: the rule is inert.
            guard let leftBytes = ByteLevel.decode(scalars: left),
                  let rightBytes = ByteLevel.decode(scalars: right)
            else {
                continue
            }
            let leftID = intern(leftBytes)
            let rightID = intern(rightBytes)
            let key = UInt64(UInt32(bitPattern: leftID)) << 32 | UInt64(UInt32(bitPattern: rightID))
            if rules[key] != nil {
                continue  // the first (highest-priority) occurrence wins
            }
            let resultID = intern(leftBytes + rightBytes)
            rules[key] = UInt64(UInt32(rank)) << 32 | UInt64(UInt32(bitPattern: resultID))
        }

        self.byteSymbols = byteSymbols
        self.rules = rules
        self.extraSymbolBytes = extra
        self.tokenForBytes = tokenIDs
    }

    /// Splits a rule at its first space after the first character; nil if there is none
    /// or the right side is empty.
    private static func parseRule(
        _ line: String
    ) -> (Substring.UnicodeScalarView, Substring.UnicodeScalarView)? {
        let scalars = Substring(line).unicodeScalars
        guard !scalars.isEmpty else { return nil }
        var index = scalars.index(after: scalars.startIndex)
        while index < scalars.endIndex && scalars[index] != " " {
            index = scalars.index(after: index)
        }
        guard index < scalars.endIndex else { return nil }
        let rightStart = scalars.index(after: index)
        guard rightStart < scalars.endIndex else { return nil }
        return (scalars[scalars.startIndex..<index], scalars[rightStart..<scalars.endIndex])
    }

    /// The rank and result of merging two symbols, or nil if no rule applies.
    @inline(__always)
    func rule(_ left: Int32, _ right: Int32) -> (rank: Int32, result: Int32)? {
        let key = UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
        guard let value = rules[key] else { return nil }
        return (Int32(truncatingIfNeeded: value >> 32), Int32(truncatingIfNeeded: value))
    }

    /// The raw bytes of a symbol that is not a token.
    func bytes(ofExtraSymbol id: Int32) -> [UInt8] {
        let index = Int(id) - vocabularySize
        guard index >= 0 && index < extraSymbolBytes.count else { return [] }
        return extraSymbolBytes[index]
    }

    /// Merges the bytes of one word and appends the resulting symbol ids to `symbols`.
    ///
    /// Repeatedly merges the adjacent pair with the lowest rank, the leftmost one among equals,
    /// until no rule applies.
    func merge(_ word: UnsafeBufferPointer<UInt8>, into symbols: inout [Int32]) {
        switch word.count {
        case 0:
            return
        case 1:
            symbols.append(byteSymbols[Int(word[0])])
        case ...64:
            mergeShort(word, into: &symbols)
        default:
            mergeLong(word, into: &symbols)
        }
    }

    /// Quadratic merging over small arrays; fast for ordinary words.
    func mergeShort(_ word: UnsafeBufferPointer<UInt8>, into output: inout [Int32]) {
        var parts = word.map { byteSymbols[Int($0)] }
        // ranks[i] / results[i] describe merging parts[i] with parts[i + 1].
        var ranks = [Int32](repeating: .max, count: parts.count - 1)
        var results = [Int32](repeating: 0, count: parts.count - 1)
        for index in 0..<(parts.count - 1) {
            if let found = rule(parts[index], parts[index + 1]) {
                ranks[index] = found.rank
                results[index] = found.result
            }
        }
        while !ranks.isEmpty {
            var best = 0
            var bestRank = ranks[0]
            for index in 1..<ranks.count where ranks[index] < bestRank {
                best = index
                bestRank = ranks[index]
            }
            if bestRank == .max {
                break
            }
            parts[best] = results[best]
            parts.remove(at: best + 1)
            ranks.remove(at: best)
            results.remove(at: best)
            if best > 0 {
                let found = rule(parts[best - 1], parts[best])
                ranks[best - 1] = found?.rank ?? .max
                results[best - 1] = found?.result ?? 0
            }
            if best < ranks.count {
                let found = rule(parts[best], parts[best + 1])
                ranks[best] = found?.rank ?? .max
                results[best] = found?.result ?? 0
            }
        }
        output.append(contentsOf: parts)
    }

    /// A candidate merge in the priority queue.
    private struct Candidate {
        var rank: Int32
        var left: Int32
        var right: Int32
        var leftSymbol: Int32
        var rightSymbol: Int32
        var result: Int32

        @inline(__always)
        func precedes(_ other: Candidate) -> Bool {
            rank < other.rank || (rank == other.rank && left < other.left)
        }
    }

    /// Merging with a linked list and a binary heap; for long words.
    func mergeLong(_ word: UnsafeBufferPointer<UInt8>, into output: inout [Int32]) {
        let count = word.count
        var symbol = word.map { byteSymbols[Int($0)] }
        var previous = (0..<count).map { Int32($0) - 1 }
        var next = (0..<count).map { $0 + 1 < count ? Int32($0 + 1) : -1 }
        var alive = [Bool](repeating: true, count: count)
        var heap: [Candidate] = []
        heap.reserveCapacity(count)

        func push(_ left: Int32, _ right: Int32) {
            guard left >= 0, right >= 0 else { return }
            let leftSymbol = symbol[Int(left)]
            let rightSymbol = symbol[Int(right)]
            guard let found = rule(leftSymbol, rightSymbol) else { return }
            heap.append(Candidate(
                rank: found.rank, left: left, right: right,
                leftSymbol: leftSymbol, rightSymbol: rightSymbol, result: found.result))
            var child = heap.count - 1
            while child > 0 {
                let parent = (child - 1) / 2
                guard heap[child].precedes(heap[parent]) else { break }
                heap.swapAt(child, parent)
                child = parent
            }
        }

        func pop() -> Candidate? {
            guard let top = heap.first else { return nil }
            let last = heap.removeLast()
            if !heap.isEmpty {
                heap[0] = last
                var parent = 0
                while true {
                    let left = 2 * parent + 1
                    let right = left + 1
                    var smallest = parent
                    if left < heap.count && heap[left].precedes(heap[smallest]) {
                        smallest = left
                    }
                    if right < heap.count && heap[right].precedes(heap[smallest]) {
                        smallest = right
                    }
                    if smallest == parent {
                        break
                    }
                    heap.swapAt(parent, smallest)
                    parent = smallest
                }
            }
            return top
        }

        for index in 0..<(count - 1) {
            push(Int32(index), Int32(index + 1))
        }
        while let candidate = pop() {
            let left = Int(candidate.left)
            let right = Int(candidate.right)
            guard alive[left], alive[right], next[left] == candidate.right,
                  symbol[left] == candidate.leftSymbol, symbol[right] == candidate.rightSymbol
            else {
                continue  // outdated
            }
            symbol[left] = candidate.result
            alive[right] = false
            next[left] = next[right]
            if next[right] >= 0 {
                previous[Int(next[right])] = candidate.left
            }
            push(previous[left], candidate.left)
            push(candidate.left, next[left])
        }
        var index: Int32 = 0
        while index >= 0 {
            output.append(symbol[Int(index)])
            index = next[Int(index)]
        }
    }
}
