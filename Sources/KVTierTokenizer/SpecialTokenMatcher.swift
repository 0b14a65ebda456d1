/// Cuts special tokens written literally in the input out of the text before it is
/// pre-tokenized, so `"<|im_start|>user"` gives the `<|im_start|>` token and then `"user"`.
///
/// Tokens are tried one after another, longest text first; each one is searched for,
/// leftmost first, in every stretch of text that earlier tokens left over. Control and
/// unknown tokens are only matched when special parsing is on; user-defined tokens always are.
struct SpecialTokenMatcher: Sendable {
    /// A piece of the input: either plain text (a byte range) or a matched token.
    enum Fragment: Equatable {
        case text(Range<Int>)
        case token(Int32)
    }

    private struct Entry: Sendable {
        let id: Int32
        let bytes: [UInt8]
        /// User-defined tokens are matched even when special parsing is off.
        let alwaysMatched: Bool
    }

    private let entries: [Entry]
    /// Whether any entry starts with a given byte.
    private let startsEntry: [Bool]

    /// - Parameter tokens: `(id, text, alwaysMatched)` for every token to match.
    init(tokens: [(id: Int32, text: String, alwaysMatched: Bool)]) {
        let sorted = tokens
            .filter { !$0.text.isEmpty }
            .sorted { lhs, rhs in
                let left = lhs.text.utf8.count
                let right = rhs.text.utf8.count
                return left != right ? left > right : lhs.id < rhs.id
            }
        entries = sorted.map { Entry(id: $0.id, bytes: Array($0.text.utf8), alwaysMatched: $0.alwaysMatched) }
        var starts = [Bool](repeating: false, count: 256)
        for entry in entries {
            if let first = entry.bytes.first {
                starts[Int(first)] = true
            }
        }
        startsEntry = starts
    }

    /// Whether there is nothing to match.
    var isEmpty: Bool { entries.isEmpty }

    /// The ids of the tokens that are matched whole, longest text first.
    var tokenIDs: [Int32] { entries.map(\.id) }

    /// Splits `text` into plain-text stretches and special tokens, in order.
    func partition(_ text: UnsafeBufferPointer<UInt8>, parseSpecial: Bool) -> [Fragment] {
        guard !text.isEmpty else { return [] }
        var fragments: [Fragment] = [.text(0..<text.count)]
        var candidates: [Int] = []
        for index in 0..<text.count where startsEntry[Int(text[index])] {
            candidates.append(index)
        }
        guard !candidates.isEmpty else { return fragments }

        for entry in entries where parseSpecial || entry.alwaysMatched {
            var replaced: [Fragment] = []
            replaced.reserveCapacity(fragments.count + 2)
            var changed = false
            for fragment in fragments {
                guard case .text(let range) = fragment else {
                    replaced.append(fragment)
                    continue
                }
                var stretchStart = range.lowerBound
                var candidate = lowerBound(candidates, range.lowerBound)
                let lastStart = range.upperBound - entry.bytes.count
                while candidate < candidates.count {
                    let position = candidates[candidate]
                    if position > lastStart {
                        break
                    }
                    if position >= stretchStart && matches(entry.bytes, in: text, at: position) {
                        if position > stretchStart {
                            replaced.append(.text(stretchStart..<position))
                        }
                        replaced.append(.token(entry.id))
                        stretchStart = position + entry.bytes.count
                        changed = true
                    }
                    candidate += 1
                }
                if stretchStart < range.upperBound {
                    replaced.append(.text(stretchStart..<range.upperBound))
                }
            }
            if changed {
                fragments = replaced
            }
        }
        return fragments
    }

    @inline(__always)
    private func matches(_ pattern: [UInt8], in text: UnsafeBufferPointer<UInt8>, at position: Int) -> Bool {
        for offset in 0..<pattern.count where text[position + offset] != pattern[offset] {
            return false
        }
        return true
    }

    /// The first index in `sorted` whose value is at least `value`.
    private func lowerBound(_ sorted: [Int], _ value: Int) -> Int {
        var low = 0
        var high = sorted.count
        while low < high {
            let middle = (low + high) / 2
            if sorted[middle] < value {
                low = middle + 1
            } else {
                high = middle
            }
        }
        return low
    }
}
