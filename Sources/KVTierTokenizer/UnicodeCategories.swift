/// The character classes the pre-tokenizers care about, one bit each.
///
/// `defined` is set for every scalar inside the text being split, so a value of zero
/// means "past the end of the segment".
struct ScalarClass: OptionSet, Sendable {
    let rawValue: UInt8

    /// General category L (Lu, Ll, Lt, Lm, Lo).
    static let letter = ScalarClass(rawValue: 1 << 0)
    /// General category N (Nd, Nl, No).
    static let number = ScalarClass(rawValue: 1 << 1)
    /// The Unicode White_Space property (tab...CR, space, NEL, NBSP, U+1680, U+2000...U+200A,
    /// U+2028, U+2029, U+202F, U+205F, U+3000).
    static let whitespace = ScalarClass(rawValue: 1 << 2)
    /// General category P (Pc, Pd, Ps, Pe, Pi, Pf, Po).
    static let punctuation = ScalarClass(rawValue: 1 << 3)
    /// Set for every scalar that exists in the segment.
    static let defined = ScalarClass(rawValue: 1 << 7)

    init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    /// Neither whitespace, letter nor number: the `[^\s\p{L}\p{N}]` class.
    @inline(__always)
    var isOther: Bool {
        rawValue & (ScalarClass.whitespace.rawValue | ScalarClass.letter.rawValue | ScalarClass.number.rawValue) == 0
            && rawValue != 0
    }

    /// The class of a scalar value.
    @inline(__always)
    static func of(_ value: UInt32) -> ScalarClass {
        if value < 128 {
            return ScalarClass(rawValue: asciiTable[Int(value)])
        }
        return nonASCII(value)
    }

    private static let asciiTable: [UInt8] = (0..<128).map { value in
        classify(UInt32(value)).rawValue
    }

    private static func nonASCII(_ value: UInt32) -> ScalarClass {
        classify(value)
    }

    /// The Unicode version whose character categories the splitting follows.
    static let unicodeVersion: (major: Int, minor: Int) = (15, 1)

    private static func classify(_ value: UInt32) -> ScalarClass {
        guard let scalar = Unicode.Scalar(value) else { return .defined }
        let properties = scalar.properties
        var result: ScalarClass = .defined
        if properties.isWhitespace {
            result.insert(.whitespace)
        }
        // Categories are taken as of Unicode 15.1: scalars assigned later count as unassigned,
        // so text splits the same whatever Unicode version the standard library carries.
        guard let age = properties.age,
              age.major < unicodeVersion.major
                || (age.major == unicodeVersion.major && age.minor <= unicodeVersion.minor)
        else {
            return result
        }
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            result.insert(.letter)
        case .decimalNumber, .letterNumber, .otherNumber:
            result.insert(.number)
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation:
            result.insert(.punctuation)
        default:
            break
        }
        return result
    }
}
