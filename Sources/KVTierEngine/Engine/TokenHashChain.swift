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

    /// Link hashes of every complete block of `tokens`, in `owner`'s namespace.
    static func links(_ tokens: [Int32], owner: String? = nil) -> [UInt64] {
        var out: [UInt64] = []
        out.reserveCapacity(tokens.count / blockTokens)
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        if let owner {
            for b in owner.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
            h = (h ^ 0x1ff) &* 0x0000_0100_0000_01b3  // end of namespace
        }
        var i = 0
        while i + blockTokens <= tokens.count {
            for t in tokens[i..<(i + blockTokens)] {
                h = (h ^ UInt64(UInt32(bitPattern: t))) &* 0x0000_0100_0000_01b3
            }
            h = (h ^ 0xff) &* 0x0000_0100_0000_01b3  // block boundary
            out.append(h)
            i += blockTokens
        }
        return out
    }
}
