import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Who may connect and what they may do: socket mode, SO_PEERCRED/SO_PEERGROUPS admin checks,
/// sessions owned per uid, prefix matching that never crosses uids, and the loopback TCP
/// listener. Clients run as an unprivileged uid through `setpriv` (root passes every mode check).
final class DaemonAccessTests: XCTestCase {
    private let nobody = "65534"

    private func requireSetpriv() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root to run clients as another uid with setpriv") }
        for tool in ["/usr/bin/setpriv", "/usr/bin/curl"] where !FileManager.default.isExecutableFile(atPath: tool) {
            throw XCTSkip("\(tool) missing (make deps installs util-linux and curl)")
        }
    }

    /// A daemon on a socket in a directory other users may enter, as the access tests need
    /// (after checking that they can run; `setpriv` needs root).
    private func daemonForOthers(config: String? = nil) throws -> (socket: String, daemon: Process) {
        try requireSetpriv()
        let dir = try temporaryDirectory(self)
        chmod(dir, 0o755)
        let socket = dir + "/k.sock"
        return (socket, try startDaemon(socket: socket, state: dir + "/state", config: config))
    }

    /// curl as uid/gid 65534 with the given supplementary groups; returns curl's exit status,
    /// the HTTP status and the body.
    private func curlAs(groups: [UInt32], socket: String, _ method: String, _ path: String, body: String? = nil) throws -> (Int32, Int, [String: Any]) {
        var args = ["--reuid=\(nobody)", "--regid=\(nobody)"]
        args += groups.isEmpty ? ["--clear-groups"] : ["--groups=" + groups.map(String.init).joined(separator: ",")]
        args += ["/usr/bin/curl", "-s", "--max-time", "60", "--unix-socket", socket, "-X", method, "-w", "\n%{http_code}"]
        if let body { args += ["-H", "Content-Type: application/json", "--data-binary", body] }
        args.append("http://kvtier" + path)
        let (rc, out) = try runProcess("/usr/bin/setpriv", args)
        let lines = out.split(separator: "\n", omittingEmptySubsequences: false)
        let status = Int(lines.last ?? "") ?? 0
        let json = (try? JSONSerialization.jsonObject(with: Data(lines.dropLast().joined(separator: "\n").utf8))) as? [String: Any] ?? [:]
        return (rc, status, json)
    }

    private func chatBody(_ text: String, session: String? = nil) -> String {
        var body: [String: Any] = ["messages": [["role": "user", "content": text]], "max_tokens": 4, "temperature": 0]
        if let session { body["session_id"] = session }
        return String(decoding: try! JSONSerialization.data(withJSONObject: body), as: UTF8.self)
    }

    /// `server.max_turns_per_user`: a user at the cap gets 429 naming it, with Retry-After;
    /// another uid is still served.
    func testOneUsersCapAnswers429ToThatUserOnly() throws {
        let (socket, daemon) = try daemonForOthers(
            config: "[server]\nsocket_mode = \"0666\"\nmax_turns_per_user = 1\n[engine]\nmax_batch = 1\n")
        defer { stop(daemon) }
        // Root's one allowed turn, long enough to be running while the others ask.
        let long = #"{"messages":[{"role":"user","content":"Tell me a story."}],"max_tokens":80,"ignore_eos":true,"temperature":0}"#
        let longRequest = Array("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nConnection: close\r\nContent-Length: \(long.utf8.count)\r\n\r\n\(long)".utf8)
        let done = DispatchSemaphore(value: 0)
        Thread {
            _ = try? exchange(socket, longRequest)
            done.signal()
        }.start()
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, let h = try? request(socket, "GET", "/healthz"), (h.json["running"] as? Int ?? 0) == 0 { usleep(20_000) }
        let mine = try rawRequest(socket, "POST", "/v1/chat/completions", body: chatBody("one more from root"))
        XCTAssertEqual(mine.0, 429, mine.1)
        XCTAssertTrue(mine.1.contains("max_turns_per_user"), mine.1)
        let theirs = try curlAs(groups: [], socket: socket, "POST", "/v1/chat/completions", body: chatBody("hello from another user"))
        XCTAssertEqual(theirs.1, 200, "another uid is not limited by root's turns: \(theirs.2)")
        XCTAssertEqual(done.wait(timeout: .now() + 120), .success)
    }

    /// `server.max_connections_per_user`: a user holding that many connections gets 429 on the
    /// next, naming the setting; another uid is still served.
    func testOneUsersConnectionsAreCappedForThatUserOnly() throws {
        let (socket, daemon) = try daemonForOthers(config: "[server]\nsocket_mode = \"0666\"\nmax_connections_per_user = 2\n")
        defer { stop(daemon) }
        let held = try (0..<2).map { _ in try connectUnix(socket) }
        defer { for fd in held { close(fd) } }
        usleep(300_000)
        let mine = try rawRequest(socket, "GET", "/healthz")
        XCTAssertEqual(mine.0, 429, mine.1)
        XCTAssertTrue(mine.1.contains("max_connections_per_user = 2"), mine.1)
        let theirs = try curlAs(groups: [], socket: socket, "GET", "/healthz")
        XCTAssertEqual(theirs.1, 200, "another uid is not limited by root's connections")
    }

    /// One user holding every connection it may have (`max_connections_per_user`, 1,024 by
    /// default; 200 in the quick variant) leaves another user served: all of the other user's
    /// /healthz requests answer 200, and their latency is reported before and during the hold
    /// (docs/reliability.md).
    func testOthersAreServedWhileOneUserHoldsItsConnectionLimit() throws {
        let held = ReliabilityScale.pick(quick: 200, full: 1024)
        var rl = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
        guard rl.rlim_max >= rlim_t(held + 256) else { throw XCTSkip("RLIMIT_NOFILE \(rl.rlim_max) is too low to hold \(held)") }
        rl.rlim_cur = max(rl.rlim_cur, rlim_t(held + 256))
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
        let (socket, daemon) = try daemonForOthers(
            config: "[server]\nsocket_mode = \"0666\"\nmax_connections_per_user = \(held)\n")
        defer { stop(daemon) }
        /// The other user's 200 requests, one curl run: each request's status and seconds.
        func theirs() throws -> [(status: Int, seconds: Double)] {
            var args = ["--reuid=\(nobody)", "--regid=\(nobody)", "--clear-groups", "/usr/bin/curl", "-s", "--max-time", "60"]
            args += ["--unix-socket", socket, "-w", "\nT %{http_code} %{time_total}\n"]
            args += Array(repeating: "http://kvtier/healthz", count: 200)
            let (_, out) = try runProcess("/usr/bin/setpriv", args)
            return out.split(separator: "\n").filter { $0.hasPrefix("T ") }.compactMap {
                let f = $0.split(separator: " ")
                guard f.count == 3, let s = Int(f[1]), let t = Double(f[2]) else { return nil }
                return (s, t)
            }
        }
        func p(_ q: Double, _ xs: [Double]) -> Double {
            let s = xs.sorted()
            return s.isEmpty ? .nan : s[min(s.count - 1, Int(q * Double(s.count)))]
        }
        let before = try theirs()
        XCTAssertEqual(before.count, 200)
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        for _ in 0..<held { fds.append(try connectUnix(socket)) }
        usleep(500_000)  // accepted and counted
        let mine = try rawRequest(socket, "GET", "/healthz")
        XCTAssertEqual(mine.0, 429, "root is at its limit: \(mine.1)")
        let during = try theirs()
        XCTAssertEqual(during.count, 200)
        XCTAssertTrue(during.allSatisfy { $0.status == 200 }, "\(during.filter { $0.status != 200 }.prefix(5))")
        let ms = { (xs: [(status: Int, seconds: Double)]) in xs.map { $0.seconds * 1000 } }
        print(String(
            format: "connection limit: %d held by one uid; the other uid's /healthz p50 %.2f ms, p99 %.2f ms (before: %.2f, %.2f)",
            held, p(0.5, ms(during)), p(0.99, ms(during)), p(0.5, ms(before)), p(0.99, ms(before))))
        ReliabilityScale.report("connection-limit", [
            "held": held, "others_requests": during.count, "others_ok": during.filter { $0.status == 200 }.count,
            "others_healthz_p50_ms": p(0.5, ms(during)), "others_healthz_p99_ms": p(0.99, ms(during)),
            "before_p50_ms": p(0.5, ms(before)), "before_p99_ms": p(0.99, ms(before)),
        ])
    }

    func testSocketModeKeepsOthersOut() throws {
        let (socket, daemon) = try daemonForOthers()
        defer { stop(daemon) }
        var st = stat()
        XCTAssertEqual(stat(socket, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o660, "the default socket mode is 0660")
        let (rc, _, _) = try curlAs(groups: [], socket: socket, "GET", "/healthz")
        XCTAssertEqual(rc, 7, "an unprivileged user outside the socket's group cannot connect (curl: couldn't connect)")
    }

    /// The daemon's state is private whatever umask it was started with: another local user can
    /// neither list the state directory nor read a file in it (the WAL holds every chat's tokens),
    /// though it was created 0755 before the daemon came.
    func testStateIsPrivateToTheDaemonsUser() throws {
        try requireSetpriv()
        let dir = try temporaryDirectory(self)
        chmod(dir, 0o755)
        let socket = dir + "/k.sock", state = dir + "/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: false)
        XCTAssertEqual(chmod(state, 0o755), 0)
        let previous = umask(0o022)
        let daemon = try startDaemon(socket: socket, state: state)
        umask(previous)
        defer { stop(daemon) }
        XCTAssertEqual(try chat(socket, [("user", "a secret worth keeping")], session: "private").status, 200)
        XCTAssertEqual(try request(socket, "POST", "/v1/flush").status, 200)

        var st = stat()
        XCTAssertEqual(stat(state, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o700, "the state directory was tightened to 0700")
        let files = try FileManager.default.subpathsOfDirectory(atPath: state)
        XCTAssertTrue(files.contains { $0.hasSuffix(".log") }, "the WAL is there: \(files)")
        for f in files {
            XCTAssertEqual(lstat(state + "/" + f, &st), 0)
            XCTAssertEqual(st.st_mode & 0o077, 0, "\(f) is mode \(String(st.st_mode & 0o777, radix: 8)): others may use it")
        }
        let wal = state + "/" + (files.first { $0.hasSuffix(".log") } ?? "?")
        for (tool, args) in [("/bin/ls", [state]), ("/bin/cat", [wal])] {
            let (rc, out) = try runProcess(
                "/usr/bin/setpriv", ["--reuid=\(nobody)", "--regid=\(nobody)", "--clear-groups", tool] + args)
            XCTAssertNotEqual(rc, 0, "another user ran \(tool) \(args): \(out.prefix(200))")
            XCTAssertTrue(out.contains("Permission denied"), out)
        }
    }

    func testAdminNeedsPrivilegeAndSessionsStayWithTheirOwner() throws {
        try requireSetpriv()
        guard let adm = getgrnam("adm")?.pointee.gr_gid else { throw XCTSkip("no group adm") }
        let dir = try temporaryDirectory(self)
        chmod(dir, 0o755)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(
            socket: socket, state: dir + "/state", config: "[server]\nsocket_mode = \"0666\"\nadmin_group = \"adm\"\n")
        defer { stop(daemon) }

        // root's session, with a history long enough for the prefix index.
        let question = "Please explain in a few sentences how a tiered key-value cache keeps chats fast across many turns."
        XCTAssertEqual(try chat(socket, [("user", question)], session: "mine").status, 200)

        // An unprivileged peer: reads are open, state changes are not, root's session is invisible.
        XCTAssertEqual(try curlAs(groups: [], socket: socket, "GET", "/v1/tiers").1, 200)
        let flush = try curlAs(groups: [], socket: socket, "POST", "/v1/flush")
        XCTAssertEqual(flush.1, 403)
        XCTAssertTrue(((flush.2["error"] as? [String: Any])?["message"] as? String ?? "").contains("uid 65534"))
        XCTAssertEqual(try curlAs(groups: [], socket: socket, "POST", "/v1/hints", body: #"{"upcoming":["mine"]}"#).1, 403)
        XCTAssertEqual(try curlAs(groups: [], socket: socket, "GET", "/v1/sessions/mine").1, 404)
        XCTAssertEqual(try curlAs(groups: [], socket: socket, "DELETE", "/v1/sessions/mine").1, 404)
        XCTAssertEqual(try curlAs(groups: [], socket: socket, "POST", "/v1/sessions/mine/demote", body: #"{"to":"disk"}"#).1, 404)
        let listed = try curlAs(groups: [], socket: socket, "GET", "/v1/sessions")
        XCTAssertEqual((listed.2["sessions"] as? [Any])?.count, 0, "another uid's sessions are not listed")

        // The same messages without a session id: no cache hit on root's session.
        let same = try curlAs(groups: [], socket: socket, "POST", "/v1/chat/completions", body: chatBody(question))
        XCTAssertEqual(same.1, 200)
        XCTAssertEqual((same.2["kvtier"] as? [String: Any])?["tokens_reused"] as? Int, 0, "prefix matching never crosses uids")
        XCTAssertNotEqual(same.2["session_id"] as? String, "mine")
        // The same session id names the peer's own session, not root's (which stays as it was).
        let rootsBefore = try request(socket, "GET", "/v1/sessions/mine").json["tokens"] as? Int
        let own = try curlAs(groups: [], socket: socket, "POST", "/v1/chat/completions", body: chatBody("hello", session: "mine"))
        XCTAssertEqual(own.1, 200)
        XCTAssertEqual(own.2["session_id"] as? String, "mine")
        XCTAssertEqual(try request(socket, "GET", "/v1/sessions/mine").json["tokens"] as? Int, rootsBefore)
        XCTAssertNotNil(rootsBefore)
        XCTAssertEqual(
            try curlAs(groups: [], socket: socket, "POST", "/v1/sessions/mine/demote", body: #"{"to":"disk"}"#).1, 403,
            "moving data between tiers is an admin operation, even on one's own session")
        XCTAssertEqual(try curlAs(groups: [], socket: socket, "DELETE", "/v1/sessions/mine").1, 200, "owners drop their own sessions")

        // Root's own request with the same messages, without an id, reuses its session's prefix
        // (in a session of its own: a request without an id never modifies a named one).
        let rootAgain = try chat(socket, [("user", question)], session: nil, maxTokens: 4)
        XCTAssertNotEqual(rootAgain.json["session_id"] as? String, "mine")
        XCTAssertGreaterThan((rootAgain.json["kvtier"] as? [String: Any])?["tokens_reused"] as? Int ?? 0, 0)

        // Admins see everyone's sessions under full ids.
        let all = try XCTUnwrap(try request(socket, "GET", "/v1/sessions").json["sessions"] as? [[String: Any]])
        XCTAssertTrue(all.contains { $0["id"] as? String == "mine" && $0["owner"] as? String == "0" })
        XCTAssertTrue(all.contains { ($0["id"] as? String ?? "").hasPrefix("65534:") && $0["owner"] as? String == nobody })

        // A supplementary group is enough for admin (SO_PEERGROUPS, not just SO_PEERCRED's gid).
        XCTAssertEqual(try curlAs(groups: [adm], socket: socket, "POST", "/v1/flush").1, 200)
        // The admin CLI's exit status says "permission denied".
        let ctl = try daemonBinary().replacingOccurrences(of: "/kvtierd", with: "/kvtierctl")
        let (rc, out) = try runProcess("/usr/bin/setpriv", ["--reuid=\(nobody)", "--regid=\(nobody)", "--clear-groups", ctl, "flush", "--socket", socket])
        XCTAssertEqual(rc, 5, out)
    }

    func testLoopbackTCPListener() throws {
        let dir = try temporaryDirectory(self)
        let port = try freeLoopbackPort()
        let daemon = try startDaemon(
            socket: dir + "/k.sock", state: dir + "/state", config: "[server]\ntcp_listen = \"127.0.0.1:\(port)\"\n")
        defer { stop(daemon) }
        let (rc, out) = try runProcess("/usr/bin/curl", ["-s", "-w", "\n%{http_code}", "http://127.0.0.1:\(port)/healthz"])
        XCTAssertEqual(rc, 0)
        XCTAssertTrue(out.hasSuffix("\n200"), out)
        let (_, flush) = try runProcess("/usr/bin/curl", ["-s", "-X", "POST", "-w", "\n%{http_code}", "http://127.0.0.1:\(port)/v1/flush"])
        XCTAssertTrue(flush.hasSuffix("\n403"), "TCP clients carry no credentials and are never admins: \(flush)")

        // Only loopback is accepted.
        try Data("[server]\ntcp_listen = \"0.0.0.0:\(port)\"\n".utf8).write(to: URL(fileURLWithPath: dir + "/bad.toml"))
        let (status, message) = try runProcess(try daemonBinary(), ["--config", dir + "/bad.toml", "--socket", dir + "/b.sock", "--state-dir", dir + "/b"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(message.contains("server.tcp_listen"), message)
    }

    private func freeLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}
