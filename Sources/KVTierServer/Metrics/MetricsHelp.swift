/// The `# HELP` line of every metric kvtierd exports. swift-metrics' API carries no help text, so
/// the exposition gets these lines inserted before each family's `# TYPE` line.
enum MetricsHelp {
    static let text: [String: String] = [
        "kvtier_ttft_seconds":
            "Time from a request's arrival to its first generated token, every wait included (queue, saves, loads).",
        "kvtier_save_wait_seconds":
            "Time a turn waited for earlier turns' saves and removals before it started (part of TTFT).",
        "kvtier_load_stall_seconds": "Time a turn waited for its reused KV to reach HBM.",
        "kvtier_save_lag_seconds": "Time a turn spent handing its new KV to the store and waiting for its save queue.",
        "kvtier_turn_seconds": "Wall time of a turn, prompt and reply.",
        "kvtier_remote_layer_read_seconds":
            "Time to read one layer's reused blocks from the remote tier (one pipeline per layer and turn).",
        "kvtier_build_info": "The serving build: 1, with its version and the commit it was built from as labels.",
        "kvtier_queue_depth": "Turns waiting to start.",
        "kvtier_running_turns": "Turns in the running batch.",
        "kvtier_tokens_reused_total": "Prompt tokens whose KV was reused instead of computed.",
        "kvtier_tokens_recomputed_total": "Prompt tokens computed.",
        "kvtier_tokens_generated_total": "Tokens generated.",
        "kvtier_tokens_truncated_total": "History tokens dropped to fit the context window.",
        "kvtier_tokens_served_total": "Reused tokens by the tier their KV came from.",
        "kvtier_tokens_adopted_total":
            "Reused tokens a turn took up from blocks another chat of its owner stored for the same tokens.",
        "kvtier_blocks_shared_on_save_total":
            "New blocks exchanged, when a turn's state was kept, for an equal block another chat had stored.",
        "kvtier_turns_total": "Turns finished, by finish reason.",
        "kvtier_sessions_expired_total":
            "Chats without a session id forgotten after engine.anonymous_session_idle_seconds without a turn.",
        "kvtier_http_responses_total": "HTTP responses sent, by status code.",
        "kvtier_batch_steps_total": "Batched forward steps run.",
        "kvtier_batch_rows_total": "Tokens that went through the decoder in batched steps.",
        "kvtier_batch_compute_milliseconds_total": "Milliseconds the batch executor spent computing steps.",
        "kvtier_batch_widest_step": "Most sequences one step has carried.",
        "kvtier_tier_used_bytes": "Bytes a tier holds.",
        "kvtier_tier_capacity_bytes": "Bytes a tier may hold.",
        "kvtier_tier_blocks": "KV blocks a tier holds.",
        "kvtier_tier_hits_total": "Block lookups a tier answered.",
        "kvtier_tier_misses_total": "Block lookups a tier could not answer.",
        "kvtier_tier_evictions_total": "Blocks evicted from a tier.",
        "kvtier_tier_bytes_in_total": "Bytes written into a tier.",
        "kvtier_tier_bytes_out_total": "Bytes moved out of a tier.",
        "kvtier_tier_checksum_failures_total": "Blocks whose checksum failed when read (recomputed instead).",
        "kvtier_tier_degraded": "1 while the disk or remote tier is degraded (kvtierd serves from the tiers above it).",
        "kvtier_tier_write_errors_total": "Writes the disk tier (or requests the remote tier) failed.",
    ]

    /// `exposition` with a `# HELP` line before every `# TYPE` line that has none.
    static func insert(into exposition: [UInt8]) -> [UInt8] {
        let text = String(decoding: exposition, as: UTF8.self)
        var out = ""
        out.reserveCapacity(text.utf8.count + 4096)
        var previous = Substring("")
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# TYPE ") && !previous.hasPrefix("# HELP ") {
                let name = line.dropFirst(7).prefix { $0 != " " }
                if let help = Self.text[String(name)] { out += "# HELP \(name) \(help)\n" }
            }
            out += line
            out += "\n"
            previous = line
        }
        out.removeLast()  // the newline after the last piece, which the text did not have
        return Array(out.utf8)
    }
}
