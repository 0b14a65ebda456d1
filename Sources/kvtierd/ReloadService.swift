import KVTierServer
import Logging
import ServiceLifecycle
import UnixSignals

/// SIGHUP: reads the configuration again and applies what can change safely while serving, the
/// limits (body size, max_tokens, messages, queue, timeouts) and the log level and format. Everything else
/// (socket, model, tiers, engine) takes effect at the next start; a bad file changes nothing.
struct ReloadService: Service {
    let service: APIService
    let logger: Logger
    let load: @Sendable () throws -> DaemonConfiguration

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            do {
                let c = try load()
                service.limits.withLockedValue { $0 = c.limits }
                JournalLogHandler.level.withLockedValue { $0 = Logger.Level(rawValue: c.logLevel) ?? .info }
                JournalLogHandler.format.withLockedValue { $0 = c.logFormat }
                logger.notice(
                    "SIGHUP: reloaded limits and log level",
                    metadata: ["log_level": "\(c.logLevel)", "log_format": "\(c.logFormat.rawValue)"])
            } catch {
                logger.error("SIGHUP: configuration not reloaded, the running one stays", metadata: ["error": "\(error)"])
            }
        }
    }
}
