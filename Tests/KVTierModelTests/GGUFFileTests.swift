import Foundation
import XCTest

@testable import KVTierModel
@testable import KVTierTestSupport

final class GGUFFileTests: XCTestCase {
    func testReadsEveryMetadataTypeAndTensorInfo() throws {
        var w = GGUFWriter()
        w.add("a.u8", .u8(200))
        w.add("a.i8", .i8(-5))
        w.add("a.u16", .u16(60000))
        w.add("a.i16", .i16(-300))
        w.add("a.u32", .u32(4_000_000_000))
        w.add("a.i32", .i32(-70000))
        w.add("a.u64", .u64(1 << 40))
        w.add("a.i64", .i64(-(1 << 40)))
        w.add("a.f32", .f32(1.5))
        w.add("a.f64", .f64(-2.25))
        w.add("a.bool", .bool(true))
        w.add("a.str", .string("héllo"))
        w.add("a.arr", .array(5, [.i32(1), .i32(2), .i32(3)]))
        w.add("a.nested", .array(9, [.array(8, [.string("x")]), .array(8, [])]))
        w.add("general.alignment", .u32(64))
        w.alignment = 64
        w.addTensor("t.f32", dims: [4, 2], type: 0, values: [1, 2, 3, 4, 5, 6, 7, 8])
        w.addTensor("t.q41", dims: [64, 3], type: 3, values: (0..<192).map { Float($0) / 10 })
        let path = try tempFile(w.bytes())
        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.metadata["a.u8"], .uint8(200))
        XCTAssertEqual(f.metadata["a.i8"], .int8(-5))
        XCTAssertEqual(f.metadata["a.u16"], .uint16(60000))
        XCTAssertEqual(f.metadata["a.i16"], .int16(-300))
        XCTAssertEqual(f.metadata["a.u32"], .uint32(4_000_000_000))
        XCTAssertEqual(f.metadata["a.i32"], .int32(-70000))
        XCTAssertEqual(f.metadata["a.u64"], .uint64(1 << 40))
        XCTAssertEqual(f.metadata["a.i64"], .int64(-(1 << 40)))
        XCTAssertEqual(f.metadata["a.f32"], .float32(1.5))
        XCTAssertEqual(f.metadata["a.f64"], .float64(-2.25))
        XCTAssertEqual(f.metadata["a.bool"], .bool(true))
        XCTAssertEqual(try f.string("a.str"), "héllo")
        XCTAssertEqual(try f.intArray("a.arr"), [1, 2, 3])
        XCTAssertEqual(f.metadata["a.nested"]?.arrayValue?.count, 2)
        XCTAssertEqual(f.alignment, 64)
        XCTAssertEqual(f.dataOffset % 64, 0)
        XCTAssertEqual(f.metadataKeys.first, "a.u8")
        let t = try XCTUnwrap(f.tensor("t.q41"))
        XCTAssertEqual(t.type, .q4_1)
        XCTAssertEqual(t.dims, [64, 3])
        XCTAssertEqual(t.byteCount, 3 * 2 * 20)
        XCTAssertEqual(t.fileOffset % 64, 0)
        let f32 = try XCTUnwrap(f.tensor("t.f32"))
        let data = f.data(of: f32)
        XCTAssertEqual(data.loadUnaligned(fromByteOffset: 4 * 5, as: Float.self), 6)
        XCTAssertThrowsError(try f.string("a.u8")) { XCTAssertEqual($0 as? GGUFError, .wrongKeyType(key: "a.u8", expected: "string")) }
        XCTAssertThrowsError(try f.int("missing")) { XCTAssertEqual($0 as? GGUFError, .missingKey("missing")) }
    }

    func testVersion2IsAccepted() throws {
        var w = GGUFWriter()
        w.version = 2
        w.add("k", .u32(1))
        XCTAssertEqual(try GGUFFile(path: tempFile(w.bytes())).version, 2)
    }

    func testRejectsBadMagicVersionAndTypes() throws {
        var bytes = TinyModel().writer().bytes()
        bytes[0] = 0x00  // "GGUF" -> "\0GUF"
        XCTAssertThrowsError(try GGUFFile(path: tempFile(bytes))) {
            guard case .badMagic = $0 as? GGUFError else { return XCTFail("\($0)") }
        }
        var v = GGUFWriter()
        v.version = 7
        XCTAssertThrowsError(try GGUFFile(path: tempFile(v.bytes()))) { XCTAssertEqual($0 as? GGUFError, .unsupportedVersion(7)) }
        var q = GGUFWriter()
        q.tensors.append(.init(name: "odd", dims: [32], type: 12, data: [UInt8](repeating: 0, count: 144)))
        XCTAssertThrowsError(try GGUFFile(path: tempFile(q.bytes()))) {
            XCTAssertEqual($0 as? GGUFError, .unsupportedTensorType(tensor: "odd", type: 12))
            XCTAssertTrue("\($0)".contains("odd"))
        }
    }

    func testEveryTruncationGivesAnError() throws {
        let full = TinyModel(layers: 1, embd: 32, heads: 2, kvHeads: 1, ff: 32).writer().bytes()
        // Every cut inside the header and a sample of cuts inside the data.
        let f = try GGUFFile(path: tempFile(full))
        var cuts = Array(0..<min(f.dataOffset + 8, full.count))
        cuts += stride(from: f.dataOffset, to: full.count, by: 97).map { $0 }
        for cut in cuts {
            let path = try tempFile(Array(full.prefix(cut)))
            XCTAssertThrowsError(try LlamaModel(path: path), "cut at \(cut) was accepted")
        }
    }

    func testBitFlipsNeverCrash() throws {
        let full = TinyModel(layers: 1, embd: 32, heads: 2, kvHeads: 1, ff: 32).writer().bytes()
        let headerEnd = try GGUFFile(path: tempFile(full)).dataOffset
        var rng = TestRNG(seed: 99)
        var rejected = 0
        for _ in 0..<400 {
            var b = full
            let i = Int(rng.next() % UInt64(headerEnd))
            b[i] ^= UInt8(1 << (rng.next() % 8))
            // Must either load or throw; a crash or out-of-bounds read fails the whole test run.
            do {
                let m = try LlamaModel(path: tempFile(b))
                _ = m.config
            } catch {
                rejected += 1
                XCTAssertFalse("\(error)".isEmpty)
            }
        }
        XCTAssertGreaterThan(rejected, 50, "most header bit flips should be detected")
    }

    func testHugeCountsAreRejectedWithoutAllocating() throws {
        var bytes: [UInt8] = Array("GGUF".utf8)
        bytes += [3, 0, 0, 0]
        bytes += [0, 0, 0, 0, 0, 0, 0, 0]  // tensors
        bytes += [1, 0, 0, 0, 0, 0, 0, 0]  // one kv
        bytes += [1, 0, 0, 0, 0, 0, 0, 0, 0x6b]  // key "k"
        bytes += [9, 0, 0, 0, 8, 0, 0, 0]  // array of string
        bytes += [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]  // absurd count
        XCTAssertThrowsError(try GGUFFile(path: tempFile(bytes))) {
            guard case .invalidValue(let offset, let what) = $0 as? GGUFError else { return XCTFail("\($0)") }
            XCTAssertEqual(offset, 41)
            XCTAssertTrue(what.contains("exceeds"))
        }
    }

    func testMissingFileSaysWhatToDo() {
        XCTAssertThrowsError(try GGUFFile(path: "/nonexistent/model.gguf")) {
            XCTAssertTrue("\($0)".contains("make setup"))
        }
    }
}

/// Writes bytes to a new temporary file.
func tempFile(_ bytes: [UInt8]) throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-tests-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let path = dir.appendingPathComponent(UUID().uuidString + ".gguf").path
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return path
}
