import Foundation

/// Writes GGUF v3 files for tests: metadata of every type and tensors in F32, F16, Q8_0, Q4_0, Q4_1.
/// Quantization here is the plain ggml reference formula, written independently of the kernels.
struct GGUFWriter {
    enum Value {
        case u8(UInt8), i8(Int8), u16(UInt16), i16(Int16), u32(UInt32), i32(Int32), u64(UInt64), i64(Int64)
        case f32(Float), f64(Double), bool(Bool), string(String)
        case array(UInt32, [Value])

        var typeID: UInt32 {
            switch self {
            case .u8: return 0
            case .i8: return 1
            case .u16: return 2
            case .i16: return 3
            case .u32: return 4
            case .i32: return 5
            case .f32: return 6
            case .bool: return 7
            case .string: return 8
            case .array: return 9
            case .u64: return 10
            case .i64: return 11
            case .f64: return 12
            }
        }
    }

    struct Tensor {
        let name: String
        let dims: [Int]
        let type: UInt32
        let data: [UInt8]
    }

    var metadata: [(String, Value)] = []
    var tensors: [Tensor] = []
    var alignment = 32
    var version: UInt32 = 3

    mutating func add(_ key: String, _ value: Value) { metadata.append((key, value)) }

    /// Adds a tensor of `dims` (ggml order, fastest first) from float values, quantized to `type`.
    mutating func addTensor(_ name: String, dims: [Int], type: UInt32, values: [Float]) {
        precondition(values.count == dims.reduce(1, *))
        tensors.append(Tensor(name: name, dims: dims, type: type, data: GGUFWriter.encode(values, type: type)))
    }

    static func encode(_ v: [Float], type: UInt32) -> [UInt8] {
        var out: [UInt8] = []
        func half(_ f: Float) { let h = Float16(f).bitPattern; out += [UInt8(h & 0xff), UInt8(h >> 8)] }
        switch type {
        case 0:
            for f in v { let b = f.bitPattern; out += [UInt8(b & 0xff), UInt8((b >> 8) & 0xff), UInt8((b >> 16) & 0xff), UInt8(b >> 24)] }
        case 1:
            for f in v { half(f) }
        case 8:  // Q8_0
            for b in stride(from: 0, to: v.count, by: 32) {
                let blk = v[b..<b + 32]
                let amax = blk.map { abs($0) }.max() ?? 0
                let d = amax / 127
                let id: Float = d != 0 ? 1 / d : 0
                half(d)
                for f in blk { out.append(UInt8(bitPattern: Int8((f * id).rounded()))) }
            }
        case 2:  // Q4_0: d = max / -8 where max is the signed value of largest magnitude
            for b in stride(from: 0, to: v.count, by: 32) {
                let blk = Array(v[b..<b + 32])
                var mx: Float = 0
                for f in blk where abs(f) > abs(mx) { mx = f }
                let d = mx / -8
                let id: Float = d != 0 ? 1 / d : 0
                half(d)
                for j in 0..<16 {
                    let a = UInt8(min(15, max(0, Int((blk[j] * id + 8.5).rounded(.down)))))
                    let c = UInt8(min(15, max(0, Int((blk[j + 16] * id + 8.5).rounded(.down)))))
                    out.append(a | (c << 4))
                }
            }
        case 3:  // Q4_1: d = (max - min) / 15, m = min
            for b in stride(from: 0, to: v.count, by: 32) {
                let blk = Array(v[b..<b + 32])
                let mn = blk.min() ?? 0, mx = blk.max() ?? 0
                let d = (mx - mn) / 15
                let id: Float = d != 0 ? 1 / d : 0
                half(d)
                half(mn)
                for j in 0..<16 {
                    let a = UInt8(min(15, max(0, Int(((blk[j] - mn) * id + 0.5).rounded(.down)))))
                    let c = UInt8(min(15, max(0, Int(((blk[j + 16] - mn) * id + 0.5).rounded(.down)))))
                    out.append(a | (c << 4))
                }
            }
        default:
            fatalError("test writer: unsupported type \(type)")
        }
        return out
    }

    /// Decodes what `encode` wrote back to floats (the exact values the model file holds).
    static func decode(_ bytes: [UInt8], type: UInt32, count: Int) -> [Float] {
        func half(_ i: Int) -> Float { Float(Float16(bitPattern: UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8)) }
        var out: [Float] = []
        switch type {
        case 0:
            for i in 0..<count {
                let b = UInt32(bytes[4 * i]) | UInt32(bytes[4 * i + 1]) << 8 | UInt32(bytes[4 * i + 2]) << 16 | UInt32(bytes[4 * i + 3]) << 24
                out.append(Float(bitPattern: b))
            }
        case 1:
            for i in 0..<count { out.append(half(2 * i)) }
        case 8:
            for b in 0..<count / 32 {
                let d = half(b * 34)
                for j in 0..<32 { out.append(d * Float(Int8(bitPattern: bytes[b * 34 + 2 + j]))) }
            }
        case 2:
            for b in 0..<count / 32 {
                let d = half(b * 18)
                var lo: [Float] = [], hi: [Float] = []
                for j in 0..<16 {
                    let q = bytes[b * 18 + 2 + j]
                    lo.append(d * Float(Int(q & 15) - 8))
                    hi.append(d * Float(Int(q >> 4) - 8))
                }
                out += lo + hi
            }
        case 3:
            for b in 0..<count / 32 {
                let d = half(b * 20), m = half(b * 20 + 2)
                var lo: [Float] = [], hi: [Float] = []
                for j in 0..<16 {
                    let q = bytes[b * 20 + 4 + j]
                    lo.append(d * Float(q & 15) + m)
                    hi.append(d * Float(q >> 4) + m)
                }
                out += lo + hi
            }
        default:
            fatalError("test writer: unsupported type \(type)")
        }
        return out
    }

    func bytes() -> [UInt8] {
        var out: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func str(_ s: String) { u64(UInt64(s.utf8.count)); out += Array(s.utf8) }
        func value(_ v: Value) {
            switch v {
            case .u8(let x): out.append(x)
            case .i8(let x): out.append(UInt8(bitPattern: x))
            case .u16(let x): withUnsafeBytes(of: x.littleEndian) { out += $0 }
            case .i16(let x): withUnsafeBytes(of: x.littleEndian) { out += $0 }
            case .u32(let x): u32(x)
            case .i32(let x): withUnsafeBytes(of: x.littleEndian) { out += $0 }
            case .u64(let x): u64(x)
            case .i64(let x): withUnsafeBytes(of: x.littleEndian) { out += $0 }
            case .f32(let x): u32(x.bitPattern)
            case .f64(let x): u64(x.bitPattern)
            case .bool(let x): out.append(x ? 1 : 0)
            case .string(let s): str(s)
            case .array(let t, let items):
                u32(t)
                u64(UInt64(items.count))
                for i in items { value(i) }
            }
        }
        out += Array("GGUF".utf8)
        u32(version)
        u64(UInt64(tensors.count))
        u64(UInt64(metadata.count))
        for (k, v) in metadata {
            str(k)
            u32(v.typeID)
            value(v)
        }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            offsets.append(offset)
            offset += (t.data.count + alignment - 1) / alignment * alignment
        }
        for (t, off) in zip(tensors, offsets) {
            str(t.name)
            u32(UInt32(t.dims.count))
            for d in t.dims { u64(UInt64(d)) }
            u32(t.type)
            u64(UInt64(off))
        }
        while out.count % alignment != 0 { out.append(0) }
        for t in tensors {
            out += t.data
            while out.count % alignment != 0 { out.append(0) }
        }
        return out
    }

    func write(to path: String) throws {
        try Data(bytes()).write(to: URL(fileURLWithPath: path))
    }
}
