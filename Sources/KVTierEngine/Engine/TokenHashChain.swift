/// A hash chain over blocks of tokens: link i hashes link i - 1 and tokens [i*B, (i+1)*B).
/// Two histories share link i exactly when (up to hash collisions, which the engine rules out
/// by comparing the tokens themselves) their first (i + 1) * B tokens are identical, so a
/// request without a session id can find the session holding the longest cached prefix.
///
/// The chain starts from the owner's namespace (the daemon passes the client's uid), so the
/// same tokens sent by two owners give unrelated links: prefix matching never crosses owners,
/// and nobody learns from a cache hit what somebody else sent.
struct TokenHashChain: Sendable {
    static let blockTokens = 16

    /// FNV-1a's prime: every step of a chain is `h = (h ^ x) &* prime`.
    static let prime: UInt64 = 0x0000_0100_0000_01b3

    /// The start of a chain in `owner`'s namespace (FNV-1a's offset basis, then the owner's bytes
    /// and an end-of-namespace mark): chains of different owners share no link.
    static func seed(owner: String?) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        if let owner {
            for b in owner.utf8 { h = (h ^ UInt64(b)) &* prime }
            h = (h ^ 0x1ff) &* prime  // end of namespace
        }
        return h
    }

    /// Link hashes of every complete block of `tokens`, in `owner`'s namespace.
    static func links(_ tokens: [Int32], owner: String? = nil) -> [UInt64] {
        var out: [UInt64] = []
        out.reserveCapacity(tokens.count / blockTokens)
        var h = seed(owner: owner)
        var i = 0
        while i + blockTokens <= tokens.count {
            for t in tokens[i..<(i + blockTokens)] {
                h = (h ^ UInt64(UInt32(bitPattern: t))) &* prime
            }
            h = (h ^ 0xff) &* prime  // block boundary
            out.append(h)
            i += blockTokens
        }
        return out
    }
}
