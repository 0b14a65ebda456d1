import ArgumentParser
import Foundation
import KVTierStore

/// Hidden commands for tests and diagnosis; not part of the supported interface.
struct DebugCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "debug",
        abstract: "Debugging aids for tests (hidden).",
        shouldDisplay: false,
        subcommands: [DiskWriter.self]
    )
}

extension DebugCommand {
    /// Writes synthetic blocks into a disk tier and acknowledges each on stdout, so that a test
    /// can kill the process at any point and check that every acknowledged block survived.
    struct DiskWriter: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "disk-writer",
            abstract: "Put N deterministic blocks (block i from seed i) into a disk tier, printing 'acked <i>' after each put returns."
        )

        @Option(name: .long, help: "State directory of the disk tier.")
        var dir: String

        @Option(name: .long, help: "Number of blocks to write.")
        var blocks: Int = 1000

        @Flag(name: .long, help: "fsync the WAL on every put (power-loss safe) instead of relying on the OS page cache.")
        var sync = false

        @Option(name: .long, help: "Tokens per block (default: 1...300, drawn from the block's seed).")
        var tokens: Int?

        @Option(name: .long, help: "Disk capacity in bytes.")
        var capacity: Int = 1 << 40

        @Option(name: .long, help: "Call flush() (fsync the WAL) after every N puts; 0: never (group-commit measurement).")
        var flushEvery: Int = 0

        func validate() throws {
            if blocks < 0 { throw ValidationError("--blocks must be >= 0.") }
            if flushEvery < 0 { throw ValidationError("--flush-every must be >= 0.") }
            if let tokens, !(1...100_000).contains(tokens) { throw ValidationError("--tokens must be between 1 and 100000.") }
        }

        func run() throws {
            let tier: DiskTier
            do { tier = try DiskTier(directory: dir, capacityBytes: capacity) } catch { throw CLIError("\(error)") }
            let out = FileHandle.standardOutput
            let started = Date()
            var putSeconds = 0.0
            var flushSeconds = 0.0
            for i in 0..<blocks {
                let block = SyntheticKVBlocks.block(index: i, tokens: tokens)
                let t0 = Date()
                do { try tier.put(block, sync: sync) } catch { throw CLIError("put of block \(i) failed: \(error)") }
                putSeconds += Date().timeIntervalSince(t0)
                // FileHandle writes go straight to the file descriptor: no stdio buffer to lose.
                out.write(Data("acked \(i)\n".utf8))
                if flushEvery > 0 && (i + 1) % flushEvery == 0 {
                    let t0 = Date()
                    do { try tier.flush() } catch { throw CLIError("flush after block \(i) failed: \(error)") }
                    flushSeconds += Date().timeIntervalSince(t0)
                }
            }
            do { try tier.close() } catch { throw CLIError("\(error)") }
            let seconds = Date().timeIntervalSince(started)
            let n = Double(max(blocks, 1))
            let summary = String(format: "wrote %d blocks in %.3f s; per block: put %.2f ms, flush %.2f ms (sync: %@, flush every: %d)",
                                 blocks, seconds, putSeconds * 1000 / n, flushSeconds * 1000 / n, "\(sync)", flushEvery)
            FileHandle.standardError.write(Data("\(summary); \(tier.stats)\n".utf8))
        }
    }
}
