/// What one attempt at a turn does with each live token of its prompt: the indices below
/// `reuse` inside an intact stored block are loaded from it, the rest computed, in history
/// order; and from which history index its KV is written back. A value computed before anything
/// runs (`ChatEngine.runForward` executes it, then commits the new session state).
struct TurnPlan: Equatable {
    enum Segment: Equatable {
        /// `indices` (consecutive) read from `block`, starting `offset` tokens into it.
        case load(SessionState.BlockRange, offset: Int, indices: [Int])
        /// `indices` computed by the decoder.
        case compute([Int])
    }

    /// The live history indices of the prompt (what the KV window holds), in order.
    let live: [Int]
    let segments: [Segment]
    /// The stored blocks the turn loads.
    let needed: Set<SessionState.BlockRange>
    /// The first computed index (the prompt's length when nothing is computed).
    let firstComputed: Int
    /// The history index from which the turn (re)writes its blocks: the first computed token's,
    /// or the start of the partial block it extends (rewritten merged with the new tokens; a
    /// block that ends with the system message is complete).
    let saveFrom: Int

    /// `failed`: blocks a previous attempt could not load (computed this time).
    init(
        state: SessionState, promptCount: Int, reuse: Int, failed: [SessionState.BlockRange], systemEnd: Int?,
        blockTokens: Int
    ) {
        live = state.liveIndices(upTo: promptCount)
        func blockOf(_ i: Int) -> SessionState.BlockRange? {
            state.blocks.first { $0.start <= i && i < $0.end && !failed.contains($0) }
        }
        var segments: [Segment] = []
        for i in live {
            if i < reuse, let b = blockOf(i) {
                if case .load(let cb, let off, var idx) = segments.last, cb == b, idx.last == i - 1 {
                    idx.append(i)
                    segments[segments.count - 1] = .load(cb, offset: off, indices: idx)
                } else {
                    segments.append(.load(b, offset: i - b.start, indices: [i]))
                }
            } else if case .compute(var idx) = segments.last {
                idx.append(i)
                segments[segments.count - 1] = .compute(idx)
            } else {
                segments.append(.compute([i]))
            }
        }
        self.segments = segments
        needed = Set(
            segments.compactMap { seg -> SessionState.BlockRange? in
                if case .load(let b, _, _) = seg { return b } else { return nil }
            })
        let first =
            segments.compactMap { seg -> Int? in
                if case .compute(let idx) = seg { return idx.first } else { return nil }
            }.min() ?? promptCount
        firstComputed = first
        saveFrom =
            state.blocks.first(where: {
                $0.start <= first && first <= $0.end && $0.count < blockTokens && $0.end != systemEnd
            })?.start
            ?? state.blocks.first(where: { $0.start <= first && first < $0.end })?.start
            ?? first
    }

    /// Prompt tokens the plan computes.
    var computedCount: Int {
        segments.reduce(0) { n, seg in
            if case .compute(let idx) = seg { return n + idx.count } else { return n }
        }
    }
}
