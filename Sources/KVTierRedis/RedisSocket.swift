#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Unsafe code fenced here: a blocking TCP socket (getaddrinfo, a connect bounded by a timeout,
// send and receive timeouts). Nothing else in the module touches file descriptors or pointers.

/// A connected, blocking TCP socket. Not thread-safe: one owner uses it at a time.
final class RedisSocket {
    private var fd: Int32
    let address: String

    /// Connects to `host:port` within `timeout` seconds; reads and writes then time out after
    /// `ioTimeout` seconds each.
    init(host: String, port: Int, timeout: Double, ioTimeout: Double) throws(RedisError) {
        address = "\(host):\(port)"
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw .connect(address: address, reason: "cannot resolve host: " + String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let ai = candidate {
            candidate = ai.pointee.ai_next
            let s = socket(ai.pointee.ai_family, ai.pointee.ai_socktype, ai.pointee.ai_protocol)
            if s < 0 {
                lastError = Self.errnoText()
                continue
            }
            if let failure = Self.connect(s, ai.pointee.ai_addr, ai.pointee.ai_addrlen, timeout: timeout) {
                lastError = failure
                close(s)
                continue
            }
            fd = s
            var one: Int32 = 1
            setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            var tv = timeval(tv_sec: Int(ioTimeout), tv_usec: Int((ioTimeout - Double(Int(ioTimeout))) * 1e6))
            setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            return
        }
        throw .connect(address: address, reason: lastError)
    }

    deinit { if fd >= 0 { close(fd) } }

    func shutdown() {
        if fd >= 0 { close(fd) }
        fd = -1
    }

    /// Sends every byte or throws.
    func send(_ bytes: [UInt8]) throws(RedisError) {
        var sent = 0
        let failure: String? = bytes.withUnsafeBytes { raw in
            while sent < raw.count {
                let n = Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno == EAGAIN || errno == EWOULDBLOCK ? "send timed out" : Self.errnoText()
                }
                sent += n
            }
            return nil
        }
        if let failure { throw .io(address: address, reason: failure) }
    }

    /// Receives what is available (at least one byte), up to `buffer`'s size.
    func receive(into buffer: inout [UInt8]) throws(RedisError) -> Int {
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 { return n }
            if n == 0 { throw .io(address: address, reason: "the server closed the connection") }
            if errno == EINTR { continue }
            let reason = errno == EAGAIN || errno == EWOULDBLOCK ? "no reply within the I/O timeout" : Self.errnoText()
            throw .io(address: address, reason: reason)
        }
    }

    /// A non-blocking connect bounded by `timeout`; nil on success, else the reason.
    private static func connect(
        _ s: Int32, _ addr: UnsafeMutablePointer<sockaddr>?, _ len: socklen_t, timeout: Double
    ) -> String? {
        let flags = fcntl(s, F_GETFL, 0)
        _ = fcntl(s, F_SETFL, flags | O_NONBLOCK)
        defer { _ = fcntl(s, F_SETFL, flags) }
        if Glibc.connect(s, addr, len) == 0 { return nil }
        guard errno == EINPROGRESS else { return errnoText() }
        var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
        let ready = poll(&p, 1, Int32(timeout * 1000))
        if ready == 0 { return "connect timed out after \(timeout) s" }
        if ready < 0 { return errnoText() }
        var err: Int32 = 0
        var errLen = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &errLen)
        return err == 0 ? nil : String(cString: strerror(err))
    }

    private static func errnoText() -> String { String(cString: strerror(errno)) }
}
