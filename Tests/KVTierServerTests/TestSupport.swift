import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under /tmp (short, for socket paths), removed when the test ends.
func temporaryDirectory(_ test: XCTestCase) throws -> String {
    let dir = "/tmp/kvt-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
    return dir
}

/// Runs a program to completion; returns its exit status and stdout+stderr.
func runProcess(_ path: String, _ args: [String], cwd: String? = nil, input: String? = nil) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
    let output = Pipe()
    p.standardOutput = output
    p.standardError = output
    let stdin = Pipe()
    if input != nil { p.standardInput = stdin }
    try p.run()
    if let input {
        stdin.fileHandleForWriting.write(Data(input.utf8))
        try stdin.fileHandleForWriting.close()
    }
    let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    return (p.terminationStatus, text)
}

/// Asks a process to stop with SIGTERM; kills it if it is still running after `grace` seconds.
func terminate(_ p: Process, grace: Double = 30) {
    guard p.isRunning else { return }
    kill(p.processIdentifier, SIGTERM)
    let deadline = Date().addingTimeInterval(grace)
    while p.isRunning && Date() < deadline { usleep(50_000) }
    if p.isRunning { kill(p.processIdentifier, SIGKILL) }
    p.waitUntilExit()
}
