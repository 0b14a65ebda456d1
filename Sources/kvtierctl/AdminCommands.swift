import ArgumentParser
import Foundation
import KVTierAPI

/// Options of the commands that talk to a running kvtierd.
struct DaemonOptions: ParsableArguments {
    @Option(name: .long, help: "kvtierd's socket (default: $KVTIER_SOCKET, then run/kvtierd.sock).")
    var socket: String?

    @Flag(help: "Print the daemon's JSON instead of a table.") var json = false

    var client: DaemonClient { DaemonClient(socketPath: DaemonClient.socketPath(flag: socket)) }

    /// Prints `value` as the API's JSON (with --json) or runs `table`.
    func output<T: Encodable>(_ value: T, table: () -> Void) throws {
        if json {
            let encoder = APIJSON.encoder()
            encoder.outputFormatting.insert(.prettyPrinted)
            print(String(decoding: try encoder.encode(value), as: UTF8.self))
        } else {
            table()
        }
    }
}

/// Prints rows as an aligned table (first row = header).
func printTable(_ rows: [[String]]) {
    guard let first = rows.first else { return }
    var widths = first.map(\.count)
    for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    for r in rows {
        print(
            r.enumerated().map { i, c in
                i == 0
                    ? c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: widths[i] - c.count) + c
            }.joined(separator: "  "))
    }
}

func bytes(_ n: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n)
    var u = 0
    while v >= 1024 && u < units.count - 1 {
        v /= 1024
        u += 1
    }
    return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
}

/// Turns client failures into a message on stderr and an exit status that says what went
/// wrong: 3 daemon not running, 4 not found, 5 permission denied, 6 request rejected, 7 server
/// error, 1 anything else.
func runAdmin(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let e as DaemonClient.Failure {
        FileHandle.standardError.write(Data("kvtierctl: \(e.description)\n".utf8))
        throw ExitCode(e.kind.rawValue)
    }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Is kvtierd up, and what does it hold?")
    @OptionGroup var options: DaemonOptions

    struct Status: Encodable {
        let health: Health
        let sessions: Int
    }

    func run() async throws {
        try await runAdmin {
            let health = try await options.client.call(.GET, "/healthz", as: Health.self)
            let sessions = try await options.client.call(.GET, "/v1/sessions", as: SessionList.self).sessions.count
            try options.output(Status(health: health, sessions: sessions)) {
                print("kvtierd on \(options.client.socketPath): \(health.status), \(sessions) sessions")
                if let line = diskHealthLine(health.disk) { print(line) }
                if let remote = health.remote, let line = diskHealthLine(remote, tier: "remote") { print(line) }
            }
        }
    }
}

struct TiersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tiers", abstract: "Capacity, use and traffic of each tier.")
    @OptionGroup var options: DaemonOptions

    func run() async throws {
        try await runAdmin {
            let tiers = try await options.client.call(.GET, "/v1/tiers", as: [TierReport].self)
            try options.output(tiers) {
                var rows = [
                    [
                        "tier", "used", "capacity", "blocks", "hits", "misses", "evictions", "promotions", "demotions",
                        "in", "out",
                    ]
                ]
                for t in tiers {
                    rows.append([
                        t.tier, bytes(t.usedBytes), bytes(t.capacityBytes), "\(t.blocks)", "\(t.hits)", "\(t.misses)",
                        "\(t.evictions)", "\(t.promotions)", "\(t.demotions)", bytes(t.bytesIn), bytes(t.bytesOut),
                    ])
                }
                printTable(rows)
                for t in tiers {
                    if let health = t.health, let line = diskHealthLine(health, tier: t.tier) { print(line) }
                }
            }
        }
    }
}

/// "disk: DEGRADED since T: reason" and what to do, or nil for a healthy tier.
func diskHealthLine(_ health: DiskHealth, tier: String = "disk") -> String? {
    let notice = health.notice.map { "\n\(tier): note: \($0)" } ?? ""
    guard health.state == "degraded" else { return notice.isEmpty ? nil : String(notice.dropFirst()) }
    var line = "\(tier): DEGRADED since \(health.since ?? "?"): \(health.reason ?? "unknown")"
    line += "\n\(tier): \(health.writeErrors) failed writes; \(health.action ?? "")"
    return line + notice
}

struct SessionsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sessions", abstract: "The sessions kvtierd holds.")
    @OptionGroup var options: DaemonOptions

    func run() async throws {
        try await runAdmin {
            let list = try await options.client.call(.GET, "/v1/sessions", as: SessionList.self)
            try options.output(list) {
                var rows = [["session", "owner", "tokens", "cached", "dropped"]]
                for s in list.sessions {
                    rows.append([s.id, s.owner, "\(s.tokens)", "\(s.cachedTokens)", "\(s.droppedTokens)"])
                }
                printTable(rows)
            }
        }
    }
}

/// Percent-encodes a session id for a URL path.
func pathComponent(_ id: String) -> String {
    id.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? id
}

struct SessionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "session", abstract: "Where one session's KV blocks are, layer by layer.")
    @OptionGroup var options: DaemonOptions
    @Argument(help: "Session id.") var id: String

    func run() async throws {
        try await runAdmin {
            let d = try await options.client.call(.GET, "/v1/sessions/" + pathComponent(id), as: SessionDetail.self)
            try options.output(d) {
                print(
                    "session \(id): \(d.tokens) tokens, \(d.cachedTokens) cached, \(d.droppedTokens) dropped, \(d.messages.count) messages"
                )
                var rows = [["layer", "blocks", "tokens", "hbm", "dram", "disk"]]
                for l in d.layers {
                    rows.append(["\(l.layer)", "\(l.blocks)", "\(l.tokens)", "\(l.hbm)", "\(l.dram)", "\(l.disk)"])
                }
                printTable(rows)
            }
        }
    }
}

struct DropCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drop", abstract: "Forget a session and its KV everywhere.")
    @OptionGroup var options: DaemonOptions
    @Argument(help: "Session id.") var id: String

    func run() async throws {
        try await runAdmin {
            let answer = try await options.client.call(
                .DELETE, "/v1/sessions/" + pathComponent(id), as: Acknowledgement.self)
            try options.output(answer) { print("dropped \(id)") }
        }
    }
}

struct DemoteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demote", abstract: "Move a session down to DRAM or disk.")
    @OptionGroup var options: DaemonOptions
    @Argument(help: "Session id.") var id: String
    @Option(help: "Target tier: dram or disk.") var to = "disk"

    func validate() throws {
        guard to == "dram" || to == "disk" else { throw ValidationError("--to must be dram or disk.") }
    }

    func run() async throws {
        try await runAdmin {
            let answer = try await options.client.call(
                .POST, "/v1/sessions/" + pathComponent(id) + "/demote", body: DemoteRequest(to: to),
                as: Acknowledgement.self)
            try options.output(answer) { print("demoted \(id) to \(to)") }
        }
    }
}

struct FlushCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "flush", abstract: "Write DRAM to disk and sync it.")
    @OptionGroup var options: DaemonOptions

    func run() async throws {
        try await runAdmin {
            let answer = try await options.client.call(.POST, "/v1/flush", as: Acknowledgement.self)
            try options.output(answer) { print("flushed") }
        }
    }
}

struct HintCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hint", abstract: "Tell kvtierd which sessions come next, in order.")
    @OptionGroup var options: DaemonOptions
    @Argument(help: "Session ids, soonest first.") var ids: [String]

    func run() async throws {
        try await runAdmin {
            let answer = try await options.client.call(
                .POST, "/v1/hints", body: HintRequest(upcoming: ids), as: HintResponse.self)
            try options.output(answer) {
                print("upcoming: \(answer.upcoming.isEmpty ? "(none)" : answer.upcoming.joined(separator: ", "))")
                if !answer.unknown.isEmpty {
                    print(
                        "unknown, ignored (kvtierd has no such session of yours): \(answer.unknown.joined(separator: ", "))"
                    )
                }
            }
        }
    }
}
