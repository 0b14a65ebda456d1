import Foundation
import KVTierStore

/// Sessions shared through the remote tier: a chat another node served is adopted from its
/// published record, and a newer record replaces this node's older one before a turn. State is
/// `ChatEngine`'s, under its `stateLock`.
extension ChatEngine {
    /// Resumes a session this node does not know from the record another node published in the
    /// remote tier; its blocks then load from the cluster like from any lower tier (and a block
    /// the cluster no longer has is recomputed).
    func adoptFromRemote(_ id: String) {
        guard store.remote != nil, stateLock.withLock({ sessions[id] == nil }), let state = remoteRecord(id) else {
            return
        }
        let adopted = stateLock.withLock { () -> Bool in
            guard sessions[id] == nil else { return false }
            sessions[id] = state
            index(state)
            for b in state.blocks { references[b, default: 0] += 1 }
            return true
        }
        guard adopted else { return }
        store.adoptRemote(keys(of: state.blocks))
        persistRecord(state)
    }

    /// Takes the cluster's record of a chat this node served before when it is newer (another node
    /// ran later turns), under the session's gate, before the turn reads anything. Our copies of
    /// blocks the newer record names under the same keys hold KV of our tokens: they are kept only
    /// where both records have the same tokens up to the block's end (and neither was truncated),
    /// and dropped from this node's tiers otherwise, so the turn loads the cluster's.
    func refreshFromRemote(_ id: String) {
        guard store.remote != nil, let local = stateLock.withLock({ sessions[id] }), let theirs = remoteRecord(id),
            theirs.turns > local.turns
        else { return }
        let untruncated = local.dropEnd <= local.sinks && theirs.dropEnd <= theirs.sinks
        let stale = theirs.blocks.filter { b in
            !(untruncated && local.tokens.count >= b.end && theirs.tokens.count >= b.end
                && local.tokens[0..<b.end] == theirs.tokens[0..<b.end])
        }
        do {
            try store.forgetLocally(keys(of: stale))
        } catch {
            return  // our copies could not be dropped: keep our own record rather than risk them
        }
        persist(theirs)
        store.adoptRemote(keys(of: theirs.blocks))
    }

    /// The record of session `id` another node published in the remote tier, if any and readable.
    private func remoteRecord(_ id: String) -> SessionState? {
        guard let bytes = store.remote?.metadata(model: store.model, name: "session/" + id),
            let state = try? JSONDecoder().decode(SessionState.self, from: Data(bytes)), state.id == id
        else { return nil }
        return state
    }

    /// Every block key of `blocks`, in every layer.
    func keys(of blocks: [SessionState.BlockRange]) -> [BlockKey] {
        blocks.flatMap { b in (0..<model.kvLayout.layers).map { key($0, b) } }
    }
}
