import Foundation

/// The samples of a Prometheus text exposition (what kvtierd's GET /metrics serves), enough
/// for `kvtierctl metrics` and `top`: series name with labels -> value.
struct PrometheusText {
    struct Sample {
        let name: String
        let labels: [String: String]
        let value: Double
    }
    let samples: [Sample]

    init(_ text: String) {
        var out: [Sample] = []
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty, !line.hasPrefix("#"), let space = line.lastIndex(of: " "),
                let value = Double(line[line.index(after: space)...])
            else { continue }
            let series = line[..<space]
            var labels: [String: String] = [:]
            var name = String(series)
            if let open = series.firstIndex(of: "{"), let close = series.lastIndex(of: "}") {
                name = String(series[..<open])
                for pair in series[series.index(after: open)..<close].split(separator: ",") {
                    let kv = pair.split(separator: "=", maxSplits: 1)
                    if kv.count == 2 { labels[String(kv[0])] = String(kv[1]).trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
                }
            }
            out.append(Sample(name: name, labels: labels, value: value))
        }
        samples = out
    }

    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { s in s.name == name && labels.allSatisfy { k, v in s.labels[k] == v } }?.value
    }

    /// The q-quantile of histogram `name` (seconds), interpolated inside its bucket the way
    /// Prometheus' histogram_quantile does; nil with no observations.
    func quantile(_ q: Double, histogram name: String) -> Double? {
        let buckets = samples.filter { $0.name == name + "_bucket" }.compactMap { s -> (Double, Double)? in
            guard let le = s.labels["le"] else { return nil }
            return (le == "+Inf" ? .infinity : Double(le) ?? .nan, s.value)
        }.sorted { $0.0 < $1.0 }
        guard let total = buckets.last?.1, total > 0 else { return nil }
        let rank = q * total
        var lower = (bound: 0.0, count: 0.0)
        for (bound, count) in buckets {
            if count >= rank {
                if bound.isInfinite { return lower.bound }
                let inBucket = count - lower.count
                return inBucket > 0 ? lower.bound + (bound - lower.bound) * (rank - lower.count) / inBucket : bound
            }
            lower = (bound, count)
        }
        return lower.bound
    }
}
