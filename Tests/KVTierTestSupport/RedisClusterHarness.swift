import Foundation

#if canImport(XCTest)
    import XCTest
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// A real Redis Cluster for tests: `masters` redis-server processes, each with `replicas`
/// replicas, on loopback ports in a temporary directory, joined with
/// `redis-cli --cluster create`. Optionally with an ACL user (`user`, `password`) that the
/// nodes also use among themselves. Every process is killed when the harness is shut down or
/// released. `make setup` installs redis-server and redis-tools. The nodes are set up as
/// docs/operations.md recommends for KVTier: `cluster-require-full-coverage no`, so the slots of
/// live masters stay served while a failed master's replica takes over.
public final class RedisClusterHarness: @unchecked Sendable {
    public let directory: URL
    public let ports: [Int]
    public let user: String?
    public let password: String?
    private let lock = NSLock()
    private var processes: [Int: Process] = [:]  // guarded by `lock`

    public var seeds: [String] { ports.map { "127.0.0.1:\($0)" } }

    /// Starts the cluster and waits until every slot is served; skips the test when
    /// redis-server is missing outside CI (fails in CI).
    public init(masters: Int = 3, replicas: Int = 1, user: String? = nil, password: String? = nil) throws {
        for tool in ["redis-server", "redis-cli"] where Self.which(tool) == nil {
            #if canImport(XCTest)
                if ProcessInfo.processInfo.environment["CI"] != nil {
                    XCTFail("\(tool) is missing; `make setup` installs redis-server and redis-tools")
                }
                throw XCTSkip("\(tool) not found; run `make setup`")
            #else
                throw CocoaError(.fileNoSuchFile)
            #endif
        }
        self.user = user
        self.password = password
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        ports = try Self.freePorts(masters * (1 + replicas))
        for p in ports { try start(port: p) }
        var create = ["--cluster", "create"] + seeds + ["--cluster-replicas", String(replicas), "--cluster-yes"]
        create += authArguments
        let (status, output) = Self.run("redis-cli", create)
        guard status == 0 else {
            shutdown()
            throw HarnessError("redis-cli --cluster create failed: \(output)")
        }
        try waitUntilServing(timeout: 30)
    }

    deinit { shutdown() }

    /// redis-cli's authentication arguments for this cluster.
    public var authArguments: [String] {
        var a: [String] = []
        if let user { a += ["--user", user] }
        if let password { a += ["--pass", password, "--no-auth-warning"] }
        return a
    }

    /// Runs redis-cli against one node and returns its output.
    @discardableResult
    public func cli(_ port: Int, _ arguments: [String]) -> String {
        Self.run("redis-cli", ["-p", String(port)] + authArguments + arguments).output
    }

    /// The ports of the nodes that are masters now (from CLUSTER NODES of a live node).
    public func masterPorts() -> [Int] {
        for p in livePorts() {
            let nodes = cli(p, ["cluster", "nodes"])
            let masters = nodes.split(separator: "\n").compactMap { line -> Int? in
                let f = line.split(separator: " ")
                guard f.count > 2, f[2].contains("master"), !f[2].contains("fail") else { return nil }
                return f[1].split(separator: "@").first?.split(separator: ":").last.flatMap { Int($0) }
            }
            if !masters.isEmpty { return masters.sorted() }
        }
        return []
    }

    /// Sends `signal` to the node on `port` (SIGKILL also forgets the process).
    public func signal(_ port: Int, _ signal: Int32) {
        lock.withLock {
            guard let p = processes[port] else { return }
            kill(p.processIdentifier, signal)
            if signal == SIGKILL {
                p.waitUntilExit()
                processes[port] = nil
            }
        }
    }

    /// Waits until every live node says cluster_state:ok and all 16384 slots are assigned.
    public func waitUntilServing(timeout: Double) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let live = livePorts()
            let ok = live.allSatisfy { p in
                let info = cli(p, ["cluster", "info"])
                return info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            }
            // Replicas have finished their first sync (else a failover would lose everything).
            let synced = live.allSatisfy { p in
                let info = cli(p, ["info", "replication"])
                return info.contains("role:master")
                    || (info.contains("master_link_status:up")
                        && info.contains("master_sync_in_progress:0"))
            }
            if ok && synced && !live.isEmpty { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw HarnessError("the Redis Cluster did not reach cluster_state:ok within \(timeout) s")
    }

    public func livePorts() -> [Int] { lock.withLock { processes.keys.sorted() } }

    public func shutdown() {
        let all = lock.withLock { () -> [Process] in
            defer { processes = [:] }
            return Array(processes.values)
        }
        for p in all where p.isRunning {
            kill(p.processIdentifier, SIGCONT)
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: directory)
    }

    private func start(port: Int) throws {
        let dir = directory.appendingPathComponent(String(port))
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var conf = """
            port \(port)
            bind 127.0.0.1
            dir \(dir.path)
            cluster-enabled yes
            cluster-config-file nodes.conf
            cluster-node-timeout 1000
            cluster-replica-validity-factor 0
            cluster-require-full-coverage no
            repl-diskless-sync-delay 0
            save ""
            appendonly no
            logfile \(dir.appendingPathComponent("redis.log").path)

            """
        if let password {
            if let user {
                conf += "user default off\nuser \(user) on >\(password) ~* &* +@all\n"
                conf += "masteruser \(user)\n"
            } else {
                conf += "requirepass \(password)\n"
            }
            conf += "masterauth \(password)\n"
        }
        let path = dir.appendingPathComponent("redis.conf")
        try conf.write(to: path, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.which("redis-server") ?? "/usr/bin/redis-server")
        p.arguments = [path.path]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        lock.withLock { processes[port] = p }
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if cli(port, ["ping"]).contains("PONG") { return }
            guard p.isRunning else { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let log = (try? String(contentsOf: dir.appendingPathComponent("redis.log"), encoding: .utf8)) ?? ""
        throw HarnessError("redis-server on port \(port) did not start: \(log.suffix(500))")
    }

    /// `count` ports p with p and p + 10000 (the cluster bus) free on loopback, both below the
    /// kernel's ephemeral range: a port in it can be taken by any outgoing connection between
    /// this check and the server's bind (seen: "bind: Address already in use").
    private static func freePorts(_ count: Int) throws -> [Int] {
        let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
        let ephemeralStart = range.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } ?? 32768
        let top = max(10000 + count + 1, ephemeralStart - 10000 - count)
        for _ in 0..<50 {
            let base = Int.random(in: 10000..<top)
            let candidates = Array(base..<(base + count))
            if candidates.allSatisfy({ isFree($0) && isFree($0 + 10000) }) { return candidates }
        }
        throw HarnessError("no free loopback port range for the Redis Cluster")
    }

    private static func isFree(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    static func which(_ tool: String) -> String? {
        for dir in ["/usr/bin", "/usr/local/bin", "/bin"]
        where FileManager.default.isExecutableFile(atPath: dir + "/" + tool) {
            return dir + "/" + tool
        }
        return nil
    }

    @discardableResult
    static func run(_ tool: String, _ arguments: [String]) -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: which(tool) ?? "/usr/bin/" + tool)
        p.arguments = arguments
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        do { try p.run() } catch { return (-1, "\(error)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}

public struct HarnessError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
