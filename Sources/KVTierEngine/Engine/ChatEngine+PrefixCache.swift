import Foundation
import KVTierModel
import KVTierStore

/// The prefix cache: which session a request belongs to, and forks that share the blocks of the
/// owner's chat with the longest common prefix. State is `ChatEngine`'s, under its `stateLock`.
extension ChatEngine {
    /// Adds a session's history to the hash-chain index (caller holds `stateLock` or is `init`).
    func index(_ s: SessionState) {
        for link in TokenHashChain.links(Array(s.tokens.prefix(s.kvCount)), owner: s.owner) {
            prefixIndex[link, default: []].insert(s.id)
        }
    }

    func unindex(_ s: SessionState) {
        for link in TokenHashChain.links(Array(s.tokens.prefix(s.kvCount)), owner: s.owner) {
            prefixIndex[link]?.remove(s.id)
            if prefixIndex[link]?.isEmpty == true { prefixIndex[link] = nil }
        }
    }

    /// The session of `owner` whose history shares the longest prefix with this chat (found
    /// through the hash chain, then checked token by token), and how many tokens match; nil when
    /// none shares a whole link. Only sessions of `owner` are candidates: the chain starts in the
    /// owner's namespace. Caller holds `stateLock`; `chat` was tokenized before (no tokenizing
    /// under the lock: each candidate's own view of it is put together from its pieces).
    private func longestMatch(_ chat: TokenizedConversation, owner: String?, excluding: String? = nil) -> (
        session: String, tokens: Int
    )? {
        let prompt = chat.tokens()
        let links = TokenHashChain.links(prompt, owner: owner)
        for (i, link) in links.enumerated().reversed() {
            guard let candidates = prefixIndex[link] else { continue }
            var best: (String, Int)?
            for id in candidates.sorted() where id != excluding {
                guard let s = sessions[id], s.owner == owner else { continue }
                // Assistant replies are compared by the ids this session generated.
                let own = chat.tokens(replies: s.replies)
                let n = commonPrefix(own, s.tokens, limit: s.kvCount)
                if n >= (i + 1) * TokenHashChain.blockTokens, n > (best?.1 ?? 0) { best = (id, n) }
            }
            if let best { return (best.0, best.1) }
        }
        return nil
    }

    /// The session of `owner` holding the longest cached prefix of this chat, and how many tokens
    /// of it match (inspection and tests; requests go through `sessionForRequest`).
    public func matchSession(messages: [ChatMessage], owner: String? = nil) -> (session: String, tokens: Int)? {
        let chat = conversation.tokenize(messages)
        return stateLock.withLock { longestMatch(chat, owner: owner) }
    }

    /// The session a request runs in, chosen before it is queued.
    ///
    /// - A request naming a session runs in it. A session it creates starts as a fork of the
    ///   owner's chat sharing the longest prefix with it, so that prefix is reused, not recomputed.
    /// - A request without a session id (`named` nil) continues the owner's anonymous chat whose
    ///   whole history it extends, if no other request is about to continue it; otherwise it
    ///   runs in a new anonymous session `newID`, forked from the chat sharing its longest prefix.
    ///   So it never modifies a named session, and two anonymous chats never overwrite each other.
    ///
    /// Call `requestEnded(session:)` when the request's turn has finished, failed or was dropped.
    public func sessionForRequest(
        named: String?, messages: [ChatMessage], owner: String?, newID: @autoclosure () -> String
    ) -> String {
        sessionForRequest(named: named, chat: tokenize(messages), owner: owner, newID: newID())
    }

    /// The same for a chat already tokenized (`tokenize`).
    public func sessionForRequest(
        named: String?, chat: TokenizedConversation, owner: String?, newID: @autoclosure () -> String
    ) -> String {
        if let named { adoptFromRemote(named) }
        let (id, fork) = stateLock.withLock { () -> (String, SessionState?) in
            if let named {
                guard sessions[named] == nil else { return (named, nil) }
                return (named, forkLocked(named, owner: owner, anonymous: false, chat: chat))
            }
            if let (s, n) = longestMatch(chat, owner: owner), let state = sessions[s], state.anonymous,
                n >= state.kvCount, !claimed.contains(s)
            {
                claimed.insert(s)
                return (s, nil)
            }
            let id = newID()
            claimed.insert(id)
            if let fork = forkLocked(id, owner: owner, anonymous: true, chat: chat) { return (id, fork) }
            sessions[id] = SessionState(id: id, owner: owner, anonymous: true)
            return (id, nil)
        }
        if let fork { persistRecord(fork) }
        return id
    }

    /// The request that `sessionForRequest` placed in `session` is over.
    public func requestEnded(session: String) {
        stateLock.withLock {
            claimed.remove(session)
            // A new anonymous session whose turn never ran is forgotten.
            if let s = sessions[session], s.anonymous, s.tokens.isEmpty { sessions[session] = nil }
        }
    }

    /// A new session `id` referencing the blocks of the owner's chat that shares the longest
    /// prefix with `chat` (nil when none does). Registered at once, so those blocks stay
    /// while it references them. Caller holds `stateLock`.
    private func forkLocked(_ id: String, owner: String?, anonymous: Bool, chat: TokenizedConversation)
        -> SessionState?
    {
        guard configuration.reuseKV, let (sourceID, n) = longestMatch(chat, owner: owner, excluding: id),
            let source = sessions[sourceID]
        else { return nil }
        // After truncation only the sinks' blocks were computed from the plain prefix.
        let truncated = source.dropEnd > source.sinks
        let shared = truncated ? min(n, source.sinks) : n
        let blocks = source.blocks.filter { $0.start < shared && (!truncated || $0.end <= source.sinks) }
        guard !blocks.isEmpty else { return nil }
        var fork = SessionState(id: id, owner: owner, anonymous: anonymous)
        fork.tokens = Array(source.tokens.prefix(shared))
        fork.kvCount = shared
        fork.blocks = blocks
        fork.replies = source.replies
        fork.lastUsed = Date().timeIntervalSince1970
        sessions[id] = fork
        index(fork)
        for b in blocks { references[b, default: 0] += 1 }
        return fork
    }
}
