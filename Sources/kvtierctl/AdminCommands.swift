import ArgumentParser
import Foundation

/// Options of the commands that talk to a running kvtierd.
struct DaemonOptions: ParsableArguments {
    @Option(name: .long, help: "kvtierd's socket (default: $KVTIER_SOCKET, then run/kvtierd.sock).")
    var socket: String?

    @Flag(help: "Print the daemon's JSON instead of a table.") var json = false

    var client: DaemonClient { DaemonClient(socketPath: DaemonClient.socketPath(flag: socket)) }

    /// Sends one request and prints the answer: its JSON with --json, else `table(answer)`.
    func show(_ method: String, _ path: String, body: [String: Any]? = nil, table: (Any) -> Void) throws {
        try runAdmin {
            let value = try client.json(method, path, body: body)
            try output(value) { table(value) }
        }
    }

    /// Prints `value` as JSON (with --json) or runs `table`.
    func output(_ value: Any, table: () -> Void) throws {
        if json {
            let data = try JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .prettyPrinted])
            print(String(decoding: data, as: UTF8.self))
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
        print(r.enumerated().map { i, c in i == 0 ? c.padding(toLength: widths[i], withPad: " ", startingAt: 0) : String(repeating: " ", count: widths[i] - c.count) + c }.joined(separator: "  "))
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
func runAdmin(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as DaemonClient.Failure {
        FileHandle.standardError.write(Data("kvtierctl: \(e.description)\n".utf8))
        throw ExitCode(e.kind.rawValue)
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Is kvtierd up, and what does it hold?")
    @OptionGroup var options: DaemonOptions

    func run() throws {
        try runAdmin {
            let health = try options.client.json("GET", "/healthz")
            let sessions = ((try options.client.json("GET", "/v1/sessions") as? [String: Any])?["sessions"] as? [Any])?.count ?? 0
            try options.output(["health": health, "sessions": sessions]) {
                let h = health as? [String: Any] ?? [:]
                print("kvtierd on \(options.client.socketPath): \(h["status"] ?? "?"), \(sessions) sessions")
                if let disk = h["disk"] as? [String: Any], let line = diskHealthLine(disk) { print(line) }
            }
        }
    }
}

struct TiersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tiers", abstract: "Capacity, use and traffic of each tier.")
    @OptionGroup var options: DaemonOptions

    func run() throws {
        try options.show("GET", "/v1/tiers") { tiers in
            var rows = [["tier", "used", "capacity", "blocks", "hits", "misses", "evictions", "promotions", "demotions", "in", "out"]]
            for t in tiers as? [[String: Any]] ?? [] {
                func i(_ k: String) -> Int { t[k] as? Int ?? 0 }
                rows.append([
                    t["tier"] as? String ?? "?", bytes(i("usedBytes")), bytes(i("capacityBytes")), "\(i("blocks"))", "\(i("hits"))",
                    "\(i("misses"))", "\(i("evictions"))", "\(i("promotions"))", "\(i("demotions"))", bytes(i("bytesIn")), bytes(i("bytesOut")),
                ])
            }
            printTable(rows)
            for t in tiers as? [[String: Any]] ?? [] {
                if let health = t["health"] as? [String: Any], let line = diskHealthLine(health, tier: t["tier"] as? String ?? "disk") {
                    print(line)
                }
            }
        }
    }
}

/// "disk: DEGRADED since T: reason" and what to do, or nil for a healthy tier.
func diskHealthLine(_ health: [String: Any], tier: String = "disk") -> String? {
    let notice = (health["notice"] as? String).map { "\n\(tier): note: \($0)" } ?? ""
    guard (health["state"] as? String) == "degraded" else { return notice.isEmpty ? nil : String(notice.dropFirst()) }
    let errors = health["writeErrors"] as? Int ?? health["write_errors"] as? Int ?? 0
    var line = "\(tier): DEGRADED since \(health["since"] as? String ?? "?"): \(health["reason"] as? String ?? "unknown")"
    line += "\n\(tier): \(errors) failed writes; \(health["action"] as? String ?? "")"
    return line + notice
}

struct SessionsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sessions", abstract: "The sessions kvtierd holds.")
    @OptionGroup var options: DaemonOptions

    func run() throws {
        try options.show("GET", "/v1/sessions") { value in
            var rows = [["session", "owner", "tokens", "cached", "dropped"]]
            for s in (value as? [String: Any])?["sessions"] as? [[String: Any]] ?? [] {
                rows.append([
                    s["id"] as? String ?? "?", s["owner"] as? String ?? "", "\(s["tokens"] as? Int ?? 0)", "\(s["cached_tokens"] as? Int ?? 0)",
                    "\(s["dropped_tokens"] as? Int ?? 0)",
                ])
            }
            printTable(rows)
        }
    }
}

/// Percent-encodes a session id for a URL path.
func pathComponent(_ id: String) -> String {
    id.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? id
}

struct SessionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "session", abstract: "Where one session's KV blocks are, layer by layer.")
    @OptionGroup var options: DaemonOptions
    @Argument(help: "Session id.") var id: String

    func run() throws {
        try options.show("GET", "/v1/sessions/" + pathComponent(id)) { value in
            let d = value as? [String: Any] ?? [:]
            print("session \(id): \(d["tokens"] as? Int ?? 0) tokens, \(d["cached_tokens"] as? Int ?? 0) cached, \(d["dropped_tokens"] as? Int ?? 0) dropped")
            var rows = [["layer", "blocks", "tokens", "hbm", "dram", "disk"]]
            for l in d["layers"] as? [[String: Any]] ?? [] {
                rows.append(["\(l["layer"] as? Int ?? 0)", "\(l["blocks"] as? Int ?? 0)", "\(l["tokens"] as? Int ?? 0)",
                             "\(l["hbm"] as? Int ?? 0)", "\(l["dram"] as? Int ?? 0)", "\(l["disk"] as? Int ?? 0)"])
            }
            printTable(rows)
        }
    }
}

struct DropCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "drop", abstract: "Forget a session and its KV everywhere.")
    @OptionGroup var options: DaemonOptions
    @Argument(help: "Session id.") var id: String

    func run() throws {
        try options.show("DELETE", "/v1/sessions/" + pathComponent(id)) { _ in print("dropped \(id)") }
    }
}

struct DemoteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "demote", abstract: "Move a session down to DRAM or disk.")
    @OptionGroup var options: DaemonOptions
    @Argument(help: "Session id.") var id: String
    @Option(help: "Target tier: dram or disk.") var to = "disk"

    func validate() throws {
        guard to == "dram" || to == "disk" else { throw ValidationError("--to must be dram or disk.") }
    }

    func run() throws {
        try options.show("POST", "/v1/sessions/" + pathComponent(id) + "/demote", body: ["to": to]) { _ in print("demoted \(id) to \(to)") }
    }
}

struct FlushCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "flush", abstract: "Write DRAM to disk and sync it.")
    @OptionGroup var options: DaemonOptions

    func run() throws {
        try options.show("POST", "/v1/flush") { _ in print("flushed") }
    }
}

struct HintCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "hint", abstract: "Tell kvtierd which sessions come next, in order.")
    @OptionGroup var options: DaemonOptions
    @Argument(help: "Session ids, soonest first.") var ids: [String]

    func run() throws {
        try options.show("POST", "/v1/hints", body: ["upcoming": ids]) { value in
            let answer = value as? [String: Any] ?? [:]
            let upcoming = answer["upcoming"] as? [String] ?? []
            let unknown = answer["unknown"] as? [String] ?? []
            print("upcoming: \(upcoming.isEmpty ? "(none)" : upcoming.joined(separator: ", "))")
            if !unknown.isEmpty {
                print("unknown, ignored (kvtierd has no such session of yours): \(unknown.joined(separator: ", "))")
            }
        }
    }
}
