import Foundation
import KVTierAPI
import KVTierEngine
import KVTierModel

extension KVTierReport {
    init(_ r: TurnReport) {
        self.init(
            tokensReused: r.tokensReused, tokensRecomputed: r.tokensRecomputed, tokensGenerated: r.tokensGenerated,
            hits: Hits(hbm: r.hitsHBM, dram: r.hitsDRAM, disk: r.hitsDisk, remote: r.hitsRemote),
            ttftMs: r.queueMs + r.ttftMs, loadStallMs: r.loadStallMs, saveLagMs: r.saveLagMs,
            truncatedTokens: r.truncatedTokens, blocksRecovered: r.blocksRecovered, queueMs: r.queueMs,
            saveWaitMs: r.saveWaitMs, diskBytesRead: r.diskBytesRead, remoteBytesRead: r.remoteBytesRead)
    }
}

/// An error answer: its status, the `ErrorBody` it sends, and a Retry-After for 429 and 503.
struct APIError: Encodable, Error {
    let error: ErrorBody.Detail
    let status: Int
    /// Sent as the Retry-After header (429, 503).
    var retryAfterSeconds: Int?

    init(_ status: Int, _ type: String, _ message: String, retryAfter: Int? = nil) {
        self.status = status
        self.error = ErrorBody(message: message, type: type).error
        self.retryAfterSeconds = retryAfter
    }

    /// Encodes as `ErrorBody`: only `error` goes on the wire.
    func encode(to encoder: Encoder) throws {
        try ErrorBody(message: error.message, type: error.type).encode(to: encoder)
    }

    /// The JSON body, for the handlers that answer below the API service.
    var body: [UInt8] { (try? APIJSON.encode(self)) ?? [] }
}

extension ChoiceLogprobs {
    /// The API's form of the engine's log probabilities (token text decoded leniently: a token
    /// may hold part of a UTF-8 character; `bytes` has it exactly).
    init(_ tokens: [TokenLogprob]) {
        func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }
        self.init(
            content: tokens.map { t in
                Token(
                    token: text(t.bytes), logprob: Double(t.logprob), bytes: t.bytes.map(Int.init),
                    topLogprobs: t.top.map {
                        Top(token: text($0.bytes), logprob: Double($0.logprob), bytes: $0.bytes.map(Int.init))
                    })
            })
    }
}
