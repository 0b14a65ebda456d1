import Foundation

/// cos/sin of the rotary angles for positions [0, capacity), headDim/2 values each,
/// computed as ggml does for NORM rope: theta_i = pos * base^(-2i/d), iterated in Float.
///
/// Immutable once built; the decoder builds a larger one when positions outgrow it.
public final class RopeTable: Sendable {
    public let capacity: Int
    public let half: Int
    let cos: [Float]
    let sin: [Float]

    public init(capacity: Int, headDim: Int, base: Float) {
        self.capacity = capacity
        self.half = headDim / 2
        let thetaScale = powf(base, -2.0 / Float(headDim))
        var c = [Float](repeating: 0, count: capacity * half)
        var s = [Float](repeating: 0, count: capacity * half)
        for p in 0..<capacity {
            var theta = Float(p)
            for i in 0..<half {
                c[p * half + i] = cosf(theta)
                s[p * half + i] = sinf(theta)
                theta *= thetaScale
            }
        }
        self.cos = c
        self.sin = s
    }
}
