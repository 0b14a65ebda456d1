/// Everything that can be wrong with a GGUF file. Each case names where and what,
/// so that a user can tell a truncated download from an unsupported quantization.
public enum GGUFError: Error, Equatable, Sendable, CustomStringConvertible {
    case cannotOpen(path: String, reason: String)
    case badMagic(found: UInt32)
    case unsupportedVersion(UInt32)
    case truncated(offset: Int, needed: Int, what: String)
    case invalidValue(offset: Int, what: String)
    case unsupportedTensorType(tensor: String, type: UInt32)
    case tensorOutOfBounds(tensor: String, offset: Int, size: Int, fileSize: Int)
    case duplicateKey(String)
    case missingKey(String)
    case wrongKeyType(key: String, expected: String)
    case missingTensor(String)
    case badTensorShape(tensor: String, expected: [Int], found: [Int])
    case unsupportedArchitecture(String)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let reason):
            return "cannot open model file \(path): \(reason); check the path (--model, KVTIER_MODEL) or run `make setup`"
        case .badMagic(let found):
            return "not a GGUF file: magic is 0x\(String(found, radix: 16)), expected 0x46554747 ('GGUF')"
        case .unsupportedVersion(let v):
            return "GGUF version \(v) is not supported (supported: 2, 3)"
        case .truncated(let offset, let needed, let what):
            return "GGUF file is truncated at offset \(offset): needed \(needed) more bytes for \(what); re-download the model"
        case .invalidValue(let offset, let what):
            return "GGUF file is corrupt at offset \(offset): \(what)"
        case .unsupportedTensorType(let tensor, let type):
            return "tensor '\(tensor)' has type \(type), which KVTier does not support (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"
        case .tensorOutOfBounds(let tensor, let offset, let size, let fileSize):
            return "tensor '\(tensor)' data [\(offset), \(offset + size)) lies outside the file (\(fileSize) bytes); the file is truncated or corrupt"
        case .duplicateKey(let key):
            return "GGUF metadata key '\(key)' appears twice; the file is corrupt"
        case .missingKey(let key):
            return "GGUF metadata lacks required key '\(key)'"
        case .wrongKeyType(let key, let expected):
            return "GGUF metadata key '\(key)' is not of type \(expected)"
        case .missingTensor(let name):
            return "GGUF file lacks required tensor '\(name)'"
        case .badTensorShape(let tensor, let expected, let found):
            return "tensor '\(tensor)' has shape \(found), expected \(expected)"
        case .unsupportedArchitecture(let arch):
            return "model architecture '\(arch)' is not supported (supported: llama)"
        }
    }
}
