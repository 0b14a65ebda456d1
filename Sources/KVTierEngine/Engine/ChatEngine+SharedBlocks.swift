import KVTierStore

/// Blocks shared by content: a turn adopts the blocks other chats of its owner stored for the
/// same tokens, and a turn's new blocks are exchanged for equal ones already stored
/// (`BlockContentIndex`). State is `ChatEngine`'s, under its `stateLock`.
extension ChatEngine {
    /// Whether `entry`'s block holds the KV of `tokens` up to its end: a session referencing it
    /// has the same tokens there, and it is still referenced. Caller holds `stateLock`.
    private func holds(_ entry: BlockContentIndex.Entry, tokens: [Int32]) -> Bool {
        let end = entry.block.end
        guard references[entry.block, default: 0] > 0, let s = sessions[entry.holder], s.blocks.contains(entry.block),
            end <= s.tokens.count, end <= tokens.count
        else { return false }
        return s.tokens[0..<end] == tokens[0..<end]
    }

    /// Extends the KV `state` holds for `prompt` (tokens [0, reuse) are in its blocks) with the
    /// blocks its owner's other chats stored for the same tokens, block after block along the
    /// grid every chat's blocks follow (they end at `systemEnd`, then every `blockTokens`), up
    /// to the first block nobody stored. Only for a chat never truncated (its positions are its
    /// indices, as in every addressed block). Each adopted block is referenced until
    /// `releaseAdopted` (so no other chat's turn frees it while this turn reads it); `reuse`
    /// grows to the last one's end.
    func adoptStoredBlocks(
        _ state: inout SessionState, prompt: [Int32], reuse: inout Int, systemEnd: Int?, blockTokens: Int
    ) -> [SessionState.BlockRange] {
        guard configuration.reuseKV, state.dropEnd <= state.sinks else { return [] }
        func end(from s: Int) -> Int {
            guard let systemEnd, s < systemEnd else { return s + blockTokens }
            return min(s + blockTokens, systemEnd)
        }
        var start = 0
        while end(from: start) <= reuse { start = end(from: start) }
        var grid: [(start: Int, count: Int)] = []
        while end(from: start) <= prompt.count {
            grid.append((start, end(from: start) - start))
            start = end(from: start)
        }
        let addresses = BlockContentIndex.addresses(of: grid, in: prompt, owner: state.owner)
        return stateLock.withLock {
            var adopted: [SessionState.BlockRange] = []
            for a in addresses {
                guard let e = contentIndex.entry(at: a), holds(e, tokens: prompt) else { break }
                if !state.blocks.contains(e.block) {
                    // Its own blocks from there on (a partial last block) give way to it.
                    state.blocks.removeAll { $0.start >= a.start }
                    state.blocks.append(e.block)
                    references[e.block, default: 0] += 1
                    adopted.append(e.block)
                }
                reuse = max(reuse, e.block.end)
            }
            return adopted
        }
    }

    /// Drops the references `adoptStoredBlocks` took (after the turn's state was kept, which
    /// took its own); blocks nobody references any more go.
    func releaseAdopted(_ blocks: [SessionState.BlockRange]) {
        guard !blocks.isEmpty else { return }
        removeLater(stateLock.withLock { release(blocks) })
    }

    /// Exchanges each of `state`'s addressed blocks for the equal block already stored at its
    /// address by another chat (or an earlier turn), and returns the blocks given up. Caller
    /// holds `stateLock`.
    func shareStoredCopies(_ state: inout SessionState) -> [SessionState.BlockRange] {
        var givenUp: [SessionState.BlockRange] = []
        for (b, a) in BlockContentIndex.addressedBlocks(of: state) {
            guard let e = contentIndex.entry(at: a), e.block != b, holds(e, tokens: state.tokens),
                let i = state.blocks.firstIndex(of: b)
            else { continue }
            state.blocks[i] = e.block
            givenUp.append(b)
        }
        return givenUp
    }

    /// Records the addresses of `state`'s blocks (caller holds `stateLock` or is `init`).
    func indexContent(_ state: SessionState) {
        for (b, a) in BlockContentIndex.addressedBlocks(of: state) {
            contentIndex.insert(b, at: a, holder: state.id)
        }
    }

    /// Blocks that could not be loaded are no address's copy any more (caller does not hold `stateLock`).
    func unaddress(_ blocks: [SessionState.BlockRange]) {
        guard !blocks.isEmpty else { return }
        stateLock.withLock { for b in blocks { contentIndex.remove(b) } }
    }
}
