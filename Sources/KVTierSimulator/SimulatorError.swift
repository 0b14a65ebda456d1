/// What stops a simulation, said so that the user knows what to change.
public enum SimulatorError: Error, CustomStringConvertible, Equatable {
    /// A cost profile that cannot be read or has a bad figure: the file, then what is wrong.
    case profile(String, String)
    /// A workload or option the model cannot run.
    case invalid(String)

    public var description: String {
        switch self {
        case .profile(let path, let what): return "cost profile \(path): \(what)"
        case .invalid(let what): return what
        }
    }
}
