import Foundation
import XCTest

@testable import KVTierModel
@testable import KVTierTestSupport

/// Batched steps (several sequences in one forward pass) and the batch executor on tiny models:
/// a sequence's logits are those it gets alone, bit for bit, whatever else is in the step.
final class BatchingTests: XCTestCase {
    private func maxDiff(_ a: [[Float]]?, _ b: [[Float]]?) -> Float {
        guard let a, let b, a.count == b.count else { return .infinity }
        return zip(a, b).map { x, y in zip(x, y).map { abs($0 - $1) }.max() ?? 0 }.max() ?? 0
    }

    /// Prompts of different lengths: some below the sgemm threshold (matrix-vector rows), some above.
    /// 14 of them decode in one step: more rows than the sgemm threshold.
    private let prompts: [[Int32]] = {
        var p: [[Int32]] = [[1, 75, 104], [1, 50, 60, 70, 80]]
        p.append((0..<20).map { Int32(3 + ($0 * 37) % 250) })
        p.append((0..<40).map { Int32(3 + ($0 * 53) % 250) })
        p.append([1, 90])
        p.append((0..<13).map { Int32(3 + ($0 * 11) % 250) })
        for k in 0..<10 { p.append([1, Int32(100 + 7 * k)]) }
        return p
    }()

    /// Greedy continuation of `prompts[i]` for `steps` tokens with `step` running the given items;
    /// returns every logits vector of every sequence.
    private func run(
        _ t: Transformer, model: LlamaModel, sequences: [Int], steps: Int, together: Bool
    ) -> [Int: [[Float]]] {
        var caches: [Int: InMemoryKVCache] = [:]
        var next: [Int: [Int32]] = [:]
        var seen: [Int: [[Float]]] = [:]
        for s in sequences {
            caches[s] = InMemoryKVCache(layout: model.kvLayout, capacity: 128, precision: .f32)
            next[s] = prompts[s]
        }
        for _ in 0..<steps {
            let groups = together ? [sequences] : sequences.map { [$0] }
            for group in groups {
                let items = group.map { s -> Transformer.StepItem in
                    let cache = caches[s]!
                    let input = next[s]!
                    return Transformer.StepItem(
                        tokens: input, positions: (0..<input.count).map { Int32(cache.count + $0) }, cache: cache, logits: .last
                    ) { _, l in
                        seen[s, default: []].append(Array(l))
                        next[s] = [Int32(Sampler.argmax(Array(l)))]
                    }
                }
                let errors = t.step(items)
                XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
            }
        }
        return seen
    }

    func testSequencesInOneStepGetTheLogitsTheyGetAlone() throws {
        for (tiny, label) in [(TinyModel(), "Q4_1"), (TinyModel(matrixType: 8, seed: 13), "Q8_0"), (TinyModel(matrixType: 0, seed: 14), "F32")] {
            let model = try LlamaModel(path: tiny.write())
            for threads in [1, 2] {
                let t = model.makeTransformer(threads: threads)
                let all = Array(prompts.indices)
                let alone = run(t, model: model, sequences: all, steps: 6, together: false)
                let together = run(t, model: model, sequences: all, steps: 6, together: true)
                for s in all {
                    XCTAssertEqual(alone[s]?.count, 6)
                    XCTAssertTrue(
                        alone[s] == together[s],
                        "\(label), \(threads) threads: sequence \(s) changes when batched (max |diff| \(maxDiff(alone[s], together[s])))")
                }
            }
        }
    }

    func testOneBadItemFailsAloneAndTheOthersRun() throws {
        let model = try LlamaModel(path: TinyModel().write())
        let t = model.makeTransformer(threads: 2)
        let good = InMemoryKVCache(layout: model.kvLayout, capacity: 16)
        let full = InMemoryKVCache(layout: model.kvLayout, capacity: 2)
        var logits = 0
        let errors = t.step([
            .init(tokens: [1, 2, 3], positions: [0, 1, 2], cache: full, logits: .last),
            .init(tokens: [1, 2], positions: [0, 1], cache: good, logits: .last) { _, _ in logits += 1 },
            .init(tokens: [100_000], positions: [0], cache: good, logits: .last),
        ])
        XCTAssertEqual(errors[0], .cache(.full(capacity: 2, requested: 3)))
        XCTAssertNil(errors[1])
        if case .badInput? = errors[2] {} else { XCTFail("an out-of-vocabulary token is bad input: \(String(describing: errors[2]))") }
        XCTAssertEqual(logits, 1)
        XCTAssertEqual(good.count, 2)
        XCTAssertEqual(full.count, 0, "nothing is appended to a cache whose item failed")
    }

    /// Lanes on their own threads: one long prompt (chunked) and several short chats. Each gets
    /// exactly the logits it gets through an executor alone, the steps carry several lanes, and
    /// prompt chunks share steps with decode rows.
    func testExecutorBatchesLanesChunksPrefillAndKeepsEachLanesLogits() throws {
        let model = try LlamaModel(path: TinyModel().write())
        let long: [Int32] = (0..<70).map { Int32(3 + ($0 * 29) % 250) }
        let inputs = [long, prompts[0], prompts[1], prompts[4]]
        @Sendable func generate(_ lane: BatchExecutor.Lane, _ prompt: [Int32]) throws -> [[Float]] {
            let cache = InMemoryKVCache(layout: model.kvLayout, capacity: 128, precision: .f32)
            var seen: [[Float]] = []
            var input = prompt
            for _ in 0..<8 {
                var next: Int32 = 0
                try lane.forward(tokens: input, positions: (0..<input.count).map { Int32(cache.count + $0) }, cache: cache, logits: .last) {
                    _, l in
                    seen.append(Array(l))
                    next = Int32(Sampler.argmax(Array(l)))
                }
                input = [next]
            }
            lane.close()
            return seen
        }
        // Alone: one lane at a time.
        let single = BatchExecutor(transformer: model.makeTransformer(threads: 2), prefillChunkTokens: 16)
        defer { single.stop() }
        let alone = try inputs.map { try generate(single.lane(), $0) }
        XCTAssertEqual(single.counters.widestStep, 1)

        // Together: every lane open before any forward, and a step waits for every open lane.
        let executor = BatchExecutor(transformer: model.makeTransformer(threads: 2), prefillChunkTokens: 16, gatherSeconds: 30)
        defer { executor.stop() }
        let lanes = inputs.map { _ in executor.lane() }
        let results = LockedResults(count: inputs.count)
        let group = DispatchGroup()
        for (i, lane) in lanes.enumerated() {
            group.enter()
            Thread {
                results.set(i, Result { try generate(lane, inputs[i]) })
                group.leave()
            }.start()
        }
        XCTAssertEqual(group.wait(timeout: .now() + 60), .success)
        for i in inputs.indices {
            let batched = try results.get(i).get()
            XCTAssertTrue(batched == alone[i], "lane \(i) changes when batched (max |diff| \(maxDiff(batched, alone[i])))")
        }
        let c = executor.counters
        XCTAssertEqual(c.widestStep, inputs.count, "every lane in one step")
        XCTAssertGreaterThan(c.mixedSteps, 0, "prompt chunks and decode rows share steps")
        // The short prompts go first (step 1); the 70 tokens then take 5 steps in chunks of 16
        // while the short chats decode, and 7 more steps decode the long chat: 13 steps, not
        // 5 + 7 + 3 * 8 as one lane after another would take.
        XCTAssertEqual(c.steps, 13)
        XCTAssertEqual(c.rows, inputs.reduce(0) { $0 + $1.count + 7 })
    }

    /// A long prompt whose caller cancels leaves at the next step: the chunks after it are not computed.
    func testCancelledPromptLeavesAtTheNextStep() throws {
        let model = try LlamaModel(path: TinyModel().write())
        let executor = BatchExecutor(transformer: model.makeTransformer(threads: 2), prefillChunkTokens: 16)
        defer { executor.stop() }
        let cache = InMemoryKVCache(layout: model.kvLayout, capacity: 128)
        let asked = OrderBox()
        let isCancelled: @Sendable () -> Bool = {
            asked.append("asked")
            return asked.items.count > 1  // computing the first chunk, then cancelled
        }
        let lane = executor.lane()
        let tokens: [Int32] = (0..<70).map { Int32(3 + $0) }
        XCTAssertThrowsError(
            try lane.forward(tokens: tokens, positions: (0..<70).map { Int32($0) }, cache: cache, logits: .last, isCancelled: isCancelled) {
                _, _ in XCTFail("no logits for a cancelled prompt")
            }
        ) { XCTAssertEqual($0 as? DecoderError, .cancelled) }
        lane.close()
        XCTAssertEqual(cache.count, 16, "one chunk computed, the other four not")
        XCTAssertEqual(executor.counters.rows, 16)
    }

    /// Shortest prompt slice first, within the budget; a long prompt passed over by a stream of
    /// short ones (a new 200-token prompt every step, budget 256) goes first after `agingSteps`
    /// steps, so it is never starved.
    func testLongPromptIsNotStarvedByShortOnes() {
        XCTAssertEqual(BatchExecutor.promptSlices([(256, 0, 0), (200, 0, 1), (40, 0, 2)], budget: 256), [2, 1])
        XCTAssertEqual(BatchExecutor.promptSlices([(256, 0, 0)], budget: 128), [0], "the first always runs")
        var longSkipped = 0
        var ranAt: Int?
        for step in 1...10 {
            // The long prompt (sequence 0) and this step's new short prompt.
            let chosen = BatchExecutor.promptSlices(
                [(chunk: 256, skipped: longSkipped, sequence: 0), (chunk: 200, skipped: 0, sequence: UInt64(step))], budget: 256)
            if chosen.contains(0) {
                ranAt = step
                break
            }
            XCTAssertEqual(chosen, [1], "step \(step): the short prompt goes first")
            longSkipped += 1
        }
        XCTAssertEqual(ranAt, BatchExecutor.agingSteps + 1, "the long prompt runs once passed over agingSteps times")
    }

    func testStoppedExecutorFailsForwardWithAnError() throws {
        let model = try LlamaModel(path: TinyModel().write())
        let executor = BatchExecutor(transformer: model.makeTransformer(threads: 1))
        executor.stop()
        let cache = InMemoryKVCache(layout: model.kvLayout, capacity: 8)
        let lane = executor.lane()
        XCTAssertThrowsError(try lane.forward(tokens: [1], positions: [0], cache: cache, logits: .last) { _, _ in })
    }
}

/// Results written by several threads.
final class LockedResults: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Result<[[Float]], Error>?]
    init(count: Int) { values = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ r: Result<[[Float]], Error>) { lock.withLock { values[i] = r } }
    func get(_ i: Int) -> Result<[[Float]], Error> { lock.withLock { values[i] ?? .failure(CocoaError(.featureUnsupported)) } }
}
