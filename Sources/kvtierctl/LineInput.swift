import CLibEdit
import Foundation

// Unsafe-pointer fence: libedit's C strings.

/// The chat's input lines. On a terminal: libedit's `readline`, with line editing and a history
/// of earlier lines kept in `$XDG_STATE_HOME/kvtier/chat_history` (default
/// `~/.local/state/kvtier`), private to the user (0600: it holds what was typed). Otherwise
/// (a pipe, a file): plain lines, no prompt, no history.
final class LineInput {
    private let interactive = isatty(STDIN_FILENO) != 0
    private let historyFile: String?

    init() {
        guard interactive else {
            historyFile = nil
            return
        }
        let env = ProcessInfo.processInfo.environment
        let state = env["XDG_STATE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.local/state")
        let dir = state + "/kvtier"
        try? FileManager.default.createDirectory(
            atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        historyFile = dir + "/chat_history"
        using_history()
        stifle_history(1000)
        if let historyFile { _ = read_history(historyFile) }
    }

    /// The next line without its newline, or nil at the end of the input (Ctrl-D).
    func read(prompt: String) -> String? {
        guard interactive else { return readLine() }
        guard let raw = readline(prompt) else { return nil }
        defer { free(raw) }
        let line = String(cString: raw)
        if !line.trimmingCharacters(in: .whitespaces).isEmpty { add_history(raw) }
        return line
    }

    /// Writes the history (0600).
    func close() {
        guard let historyFile else { return }
        let old = umask(0o077)
        _ = write_history(historyFile)
        umask(old)
        chmod(historyFile, 0o600)
    }
}
