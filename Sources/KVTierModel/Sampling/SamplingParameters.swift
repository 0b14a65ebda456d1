/// How to pick the next token. `temperature == 0` means greedy.
public struct SamplingParameters: Sendable, Equatable {
    public var temperature: Float
    public var topK: Int
    public var topP: Float
    public var repetitionPenalty: Float
    /// How many recent tokens the repetition penalty looks at.
    public var repetitionWindow: Int
    public var seed: UInt64

    public init(
        temperature: Float = 0, topK: Int = 0, topP: Float = 1, repetitionPenalty: Float = 1,
        repetitionWindow: Int = 64, seed: UInt64 = 0
    ) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.repetitionPenalty = repetitionPenalty
        self.repetitionWindow = repetitionWindow
        self.seed = seed
    }

    public static let greedy = SamplingParameters()

    /// Checks ranges; the message says which value is wrong and what is allowed.
    public func validate() throws(SamplingError) {
        guard temperature.isFinite, temperature >= 0, temperature <= 100 else {
            throw SamplingError("temperature must be between 0 and 100 (0 = greedy), got \(temperature)")
        }
        guard topK >= 0 else { throw SamplingError("top_k must be >= 0 (0 = off), got \(topK)") }
        guard topP.isFinite, topP > 0, topP <= 1 else { throw SamplingError("top_p must be in (0, 1], got \(topP)") }
        guard repetitionPenalty.isFinite, repetitionPenalty > 0, repetitionPenalty <= 10 else {
            throw SamplingError("repetition penalty must be in (0, 10], got \(repetitionPenalty)")
        }
        guard repetitionWindow >= 0 else { throw SamplingError("repetition window must be >= 0") }
    }
}

public struct SamplingError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
