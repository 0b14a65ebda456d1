import CKVTierKernels
import XCTest

@testable import KVTierModel
@testable import KVTierTestSupport

/// The decoder on the real SmolLM2 model against an independent float64 numpy reference
/// (Reference/reference_forward.py; golden data in Golden/reference-logits.json) over 2,000
/// teacher-forced positions of ShareGPT text.
final class RealModelLogitsTests: XCTestCase {
    struct ReferenceLogits: Decodable {
        let ids: [Int32]
        let top1: [Int32]
        let mean_next_token_nll: Double
        struct Samples: Decodable {
            let positions: [Int]
            let logits: [[Double]]
        }
        let logits_samples: Samples
    }

    /// Prompts with at least `gemmThreshold` tokens take dequantize-and-sgemm in the linear layers.
    func testTeacherForcedLogitsMatchTheFloatReference() throws {
        try checkAgainstReference(linearGemmThreshold: nil, path: "sgemm")
    }

    /// Every linear layer on the quantized matrix-vector kernels, as kvtierd runs where
    /// `calibrateLinearGemmThreshold` finds them faster at every size (the Xeon of
    /// docs/benchmarks.md): the kernel of batched decoding and prompt chunks, checked against
    /// the float reference over the same 2,000 positions.
    func testTeacherForcedLogitsOnTheMatrixVectorKernelsMatchTheFloatReference() throws {
        try checkAgainstReference(linearGemmThreshold: Int.max, path: "matrix-vector")
    }

    /// The faster 8-bit activations (`engine.activation_bits = 8`, AVX-512 VNNI only) trade
    /// fidelity, measured here and in docs/benchmarks.md: they stay behind that option because
    /// they miss the bounds above. Bounds: what was measured (top-1 1938/2000 = 0.969, max drift
    /// 0.753, mean NLL +0.0021; the kernels' results do not vary from run to run) with a margin.
    func testTeacherForcedLogitsOn8BitActivationsStayWithinTheirMeasuredDrift() throws {
        try XCTSkipUnless(
            kvt_q8_layout(Int32(GGMLType.q4_1.rawValue)) >= 0, "no AVX-512 VNNI: the option does nothing here")
        let drift = try checkAgainstReference(
            linearGemmThreshold: nil, path: "8-bit activations", activationBits: .eight, agreement: 0.95, drift: 1.0,
            nll: 0.01)
        XCTAssertGreaterThan(drift, 0.1, "the 8-bit activations are not in effect")
    }

    @discardableResult
    private func checkAgainstReference(
        linearGemmThreshold: Int?, path: String, activationBits: ActivationBits = .sixteen,
        agreement minAgreement: Double = 0.99, drift maxDrift: Double = 0.5, nll nllAccuracy: Double = 0.01
    ) throws -> Double {
        let model = try RealModel.load()
        let ref = try RealModel.golden("reference-logits.json", as: ReferenceLogits.self)
        let n = ref.ids.count
        XCTAssertEqual(n, 2000)
        let t = model.makeTransformer(threads: 2)
        t.linearGemmThreshold = linearGemmThreshold
        t.activationBits = activationBits
        let cache = InMemoryKVCache(layout: model.kvLayout, capacity: n)
        var agree = 0
        var nll = 0.0
        var maxDiff = 0.0
        let samples = Dictionary(uniqueKeysWithValues: zip(ref.logits_samples.positions, ref.logits_samples.logits))
        try t.forward(tokens: ref.ids, positions: (0..<n).map { Int32($0) }, cache: cache, logits: .all) { i, logits in
            if Sampler.argmax(logits) == ref.top1[i] { agree += 1 }
            if i + 1 < n {
                var m = -Double.infinity
                for v in logits { m = max(m, Double(v)) }
                var s = 0.0
                for v in logits { s += exp(Double(v) - m) }
                nll += -(Double(logits[Int(ref.ids[i + 1])]) - m - log(s))
            }
            if let expected = samples[i] {
                for (a, b) in zip(logits, expected) { maxDiff = max(maxDiff, abs(Double(a) - b)) }
            }
        }
        let agreement = Double(agree) / Double(n)
        let meanNLL = nll / Double(n - 1)
        print(
            "teacher forcing (\(path)): top-1 agreement \(agree)/\(n) = \(agreement); "
                + "max |logit diff| at sampled positions \(maxDiff); "
                + "mean NLL \(meanNLL) vs reference \(ref.mean_next_token_nll)"
        )
        XCTAssertGreaterThanOrEqual(agreement, minAgreement)
        XCTAssertLessThan(maxDiff, maxDrift, "logits drift from the float reference")
        XCTAssertEqual(meanNLL, ref.mean_next_token_nll, accuracy: nllAccuracy)
        return maxDiff
    }
}
