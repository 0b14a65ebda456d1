#!/usr/bin/env python3
"""Replay a multi-turn chat trace through an OpenAI-compatible endpoint; measure client-side TTFT.

Used to run KVTier's ShareGPT replay against peers (llama.cpp's llama-server) and against
kvtierd itself with one and the same client, so the numbers compare side by side.

usage: peer_replay.py --trace FILE (--url http://127.0.0.1:PORT | --unix-socket PATH...)
                      [--label NAME] [--out FILE] [--limit N] [--max-tokens N]
                      [--timeout SECONDS] [--no-session-field] [--seed N]

Several --unix-socket: several kvtierd nodes; each turn goes to one chosen at random (--seed),
as a router without affinity would send it, and the output adds each turn's node and, after the
run, every node's /v1/tiers.

Trace (written by `kvtier-bench replay --export-trace FILE`):

    {"conversations": [{"id": "sharegpt-id", "session": "r0001",
                        "turns": [{"user": "text", "assistant": "text"}, ...]}, ...],
     "order": [["r0001", 0], ["r0002", 0], ["r0001", 1], ...]}

`order` interleaves the turns as (session, turn index). The replay is closed-loop: one request
at a time, in `order`. Turn k of a session sends [user_0, assistant_0, ..., user_k] with the
dataset's assistant texts (not what the server generated), so every system sees the same prompts.

Request body (POST /v1/chat/completions):
    {"model": "x", "messages": [...], "max_tokens": N, "temperature": 0, "stream": true,
     "session_id": SESSION, "cache_prompt": true}
`session_id` is kvtierd's extension (llama-server ignores unknown fields); `cache_prompt` is
llama-server's (kvtierd ignores unknown fields). --no-session-field leaves session_id out.

TTFT: the clock starts just before the request is written (after the connection is open) and
stops at the first SSE `data:` event whose choices[0].delta.content is non-empty
("ttft_from": "content"). If the whole stream has no such event (e.g. the one allowed token
was end-of-turn, or held back as a partial stop string), it stops at the first `data:` event
with a choices entry instead ("ttft_from": "first_choice"). llama-server flushes only headers
when prompt processing starts and sends its {"role": "assistant"} delta together with the first
token; kvtierd sends that delta (without content) as soon as the turn is queued, so for kvtierd
"first_choice" would stop the clock early, and only "content" is a first token. The stream is
always read to `data: [DONE]`.

Output (--out, JSON; also a one-line summary on stdout):
    {"system": LABEL, "turns": [{"session", "turn", "ttft_ms", "prompt_chars", "status", ...}],
     "ttft_ms": {"n", "p50", "p90", "p99", "mean"}, "ttft_ms_turn2plus": {...}, "errors": N, ...}
Each turn record also carries, when the server reports them in its last chunk, kvtierd's
"kvtier" report (tokens_reused, tokens_recomputed, hits, server-side ttft_ms, ...) and
llama-server's "timings" (prompt_n, prompt_ms, cache_n, predicted_n).

Exit status: 0, or 1 when more than 5% of the requests failed, 2 on bad arguments or trace.
Standard library only.
"""

import argparse
import http.client
import json
import socket
import sys
import time
import urllib.parse


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over an AF_UNIX stream socket (kvtierd's API socket)."""

    def __init__(self, path, timeout=None):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values):
    v = sorted(values)
    if not v:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "mean": None}
    r = lambda x: round(x, 3)
    return {"n": len(v), "p50": r(percentile(v, 50)), "p90": r(percentile(v, 90)),
            "p99": r(percentile(v, 99)), "mean": r(sum(v) / len(v))}


def load_trace(path):
    with open(path, "r", encoding="utf-8") as f:
        trace = json.load(f)
    if not isinstance(trace, dict) or "conversations" not in trace or "order" not in trace:
        raise ValueError("trace must be an object with 'conversations' and 'order'")
    sessions = {}
    for c in trace["conversations"]:
        s = c["session"]
        if s in sessions:
            raise ValueError(f"session {s!r} appears twice")
        turns = c["turns"]
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"session {s!r} has no turns")
        sessions[s] = c
    order = []
    for i, entry in enumerate(trace["order"]):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"order[{i}] is not [session, turn]")
        s, k = entry[0], entry[1]
        if s not in sessions:
            raise ValueError(f"order[{i}]: unknown session {s!r}")
        if not isinstance(k, int) or not 0 <= k < len(sessions[s]["turns"]):
            raise ValueError(f"order[{i}]: session {s!r} has no turn {k!r}")
        order.append((s, k))
    return sessions, order


def build_messages(conv, k):
    msgs = []
    turns = conv["turns"]
    for i in range(k):
        msgs.append({"role": "user", "content": turns[i]["user"]})
        msgs.append({"role": "assistant", "content": turns[i].get("assistant") or ""})
    msgs.append({"role": "user", "content": turns[k]["user"]})
    return msgs


TIMING_KEYS = ("prompt_n", "prompt_ms", "cache_n", "predicted_n")


def one_request(make_conn, body, timeout):
    """Sends one streamed chat completion; returns a partial turn record."""
    rec = {"status": None}
    payload = json.dumps(body).encode("utf-8")
    conn = make_conn(timeout)
    try:
        conn.connect()
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=payload,
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        rec["status"] = resp.status
        if resp.status != 200:
            text = resp.read().decode("utf-8", "replace")
            rec["error"] = text[:500]
            return rec
        first_choice = first_content = None
        done = False
        data_lines = []
        event_t = None
        content_len = 0
        last = None

        def dispatch(data, t):
            nonlocal first_choice, first_content, done, content_len, last
            if data.strip() == "[DONE]":
                done = True
                return
            try:
                obj = json.loads(data)
            except ValueError:
                rec["error"] = "unparsable SSE data: " + data[:200]
                return
            if not isinstance(obj, dict):
                return
            if "error" in obj:
                err = obj["error"]
                rec["error"] = (err.get("message") if isinstance(err, dict) else None) or json.dumps(err)[:500]
                return
            choices = obj.get("choices") or []
            if choices:
                delta = choices[0].get("delta") or {}
                # kvtierd's opening {"role": "assistant"} delta comes before any token: not a first choice.
                opening = delta.get("role") and not delta.get("content") and not choices[0].get("finish_reason")
                if first_choice is None and not opening:
                    first_choice = t
                piece = delta.get("content")
                if piece:
                    content_len += len(piece)
                    if first_content is None:
                        first_content = t
            if "kvtier" in obj and isinstance(obj["kvtier"], dict):
                rec["kvtier"] = obj["kvtier"]
            if "timings" in obj and isinstance(obj["timings"], dict):
                rec["timings"] = {k: obj["timings"][k] for k in TIMING_KEYS if k in obj["timings"]}
            if isinstance(obj.get("usage"), dict) and "prompt_tokens" in obj["usage"]:
                rec["prompt_tokens"] = obj["usage"]["prompt_tokens"]
            last = obj

        while not done:
            raw = resp.readline()
            if not raw:
                break
            now = time.perf_counter()
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line == "":
                if data_lines:
                    dispatch("\n".join(data_lines), event_t)
                    data_lines, event_t = [], None
                continue
            if line.startswith(":"):
                continue                        # SSE comment (keep-alive ping)
            if line.startswith("data:"):
                if event_t is None:
                    event_t = now
                v = line[5:]
                data_lines.append(v[1:] if v.startswith(" ") else v)
            # "event:", "id:", "retry:" lines carry nothing we need.
        if data_lines and not done:
            dispatch("\n".join(data_lines), event_t)
        t_end = time.perf_counter()
        if not done and "error" not in rec:
            rec["error"] = "stream ended without data: [DONE]"
        if first_content is not None:
            rec["ttft_ms"] = round((first_content - t0) * 1000.0, 3)
            rec["ttft_from"] = "content"
        elif first_choice is not None:
            rec["ttft_ms"] = round((first_choice - t0) * 1000.0, 3)
            rec["ttft_from"] = "first_choice"
        elif "error" not in rec:
            rec["error"] = "no data event with choices in the stream"
        rec["total_ms"] = round((t_end - t0) * 1000.0, 3)
        rec["completion_chars"] = content_len
        if last is not None and last.get("session_id") is not None:
            rec["session_id_reported"] = last["session_id"]
        return rec
    except (OSError, http.client.HTTPException) as e:
        rec["error"] = f"{type(e).__name__}: {e}"
        return rec
    finally:
        conn.close()


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Replay a multi-turn chat trace through an OpenAI-compatible endpoint and "
                    "measure client-side TTFT (see the module docstring for the trace format).")
    ap.add_argument("--trace", required=True, help="trace JSON (kvtier-bench replay --export-trace)")
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="http://HOST:PORT of the server (TCP)")
    target.add_argument("--unix-socket", metavar="PATH", action="append",
                        help="Unix socket of the server (kvtierd); repeat for several nodes (random routing)")
    ap.add_argument("--label", default=None, help="system name in the output (default: the target)")
    ap.add_argument("--out", help="write the JSON result here")
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N turns of order")
    ap.add_argument("--start", type=int, default=0,
                    help="skip the first N turns of order (with --limit: replay turns N to LIMIT-1)")
    ap.add_argument("--max-tokens", type=int, default=1, help="max_tokens per request (default 1)")
    ap.add_argument("--timeout", type=float, default=600.0, help="socket timeout per request, seconds (default 600)")
    ap.add_argument("--model", default="x", help='"model" field of the requests (default "x")')
    ap.add_argument("--no-session-field", dest="session_field", action="store_false",
                    help="do not send session_id (kvtierd then matches sessions by prefix)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random routing between several sockets")
    args = ap.parse_args(argv)

    try:
        sessions, order = load_trace(args.trace)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"peer_replay: bad trace {args.trace}: {e}", file=sys.stderr)
        return 2
    if args.limit is not None:
        order = order[:max(0, args.limit)]
    order = order[max(0, args.start):]
    if args.max_tokens < 1:
        ap.error("--max-tokens must be at least 1")

    import random
    rng = random.Random(args.seed)
    node_conns = None
    if args.unix_socket:
        paths = list(args.unix_socket)
        node_conns = [(lambda p: (lambda t: UnixHTTPConnection(p, timeout=t)))(p) for p in paths]
        make_conn = node_conns[0]
        target_desc = ",".join("unix:" + p for p in paths)
    else:
        u = urllib.parse.urlsplit(args.url)
        if u.scheme != "http" or not u.hostname:
            ap.error("--url must look like http://HOST:PORT")
        host, port = u.hostname, u.port or 80
        make_conn = lambda t: http.client.HTTPConnection(host, port, timeout=t)
        target_desc = args.url
    label = args.label or target_desc

    tty = sys.stderr.isatty()
    records = []
    started = time.time()
    for i, (s, k) in enumerate(order):
        conv = sessions[s]
        messages = build_messages(conv, k)
        body = {"model": args.model, "messages": messages, "max_tokens": args.max_tokens,
                "temperature": 0, "stream": True, "cache_prompt": True}
        if args.session_field:
            body["session_id"] = s
        rec = {"session": s, "turn": k, "conversation": conv.get("id"),
               "prompt_chars": sum(len(m["content"]) for m in messages)}
        conn = make_conn
        if node_conns and len(node_conns) > 1:
            rec["node"] = rng.randrange(len(node_conns))
            conn = node_conns[rec["node"]]
        rec.update(one_request(conn, body, args.timeout))
        if "error" in rec:
            rec["ok"] = False
        else:
            rec["ok"] = True
        records.append(rec)
        if tty:
            t = rec.get("ttft_ms")
            msg = f"{t:9.1f} ms" if t is not None else "   failed  "
            print(f"\r[{i + 1}/{len(order)}] {s} turn {k}: {msg} {rec.get('error', '')[:60]}\033[K",
                  end="", file=sys.stderr, flush=True)
    if tty and order:
        print(file=sys.stderr)

    ok = [r for r in records if r["ok"]]
    errors = len(records) - len(ok)
    result = {
        "system": label,
        "target": target_desc,
        "trace": args.trace,
        "max_tokens": args.max_tokens,
        "session_field": args.session_field,
        "ttft_definition": "request written -> first SSE data event with non-empty "
                           "choices[0].delta.content; else first data event with a choices entry",
        "started_unix": round(started, 3),
        "wall_s": round(time.time() - started, 3),
        "requests": len(records),
        "turns": records,
        "ttft_ms": summarize([r["ttft_ms"] for r in ok]),
        "ttft_ms_turn2plus": summarize([r["ttft_ms"] for r in ok if r["turn"] >= 1]),
        "errors": errors,
    }
    later = [r for r in ok if r["turn"] >= 1 and isinstance(r.get("kvtier"), dict)]
    if later:
        hits = {}
        for r in later:
            for tier, n in (r["kvtier"].get("hits") or {}).items():
                hits[tier] = hits.get(tier, 0) + (n or 0)
        result["turn2plus_tokens_reused"] = sum(r["kvtier"].get("tokens_reused", 0) for r in later)
        result["turn2plus_tokens_recomputed"] = sum(r["kvtier"].get("tokens_recomputed", 0) for r in later)
        result["turn2plus_hits"] = hits
    if node_conns:
        tiers = []
        for c in node_conns:
            try:
                h = c(30)
                h.request("GET", "/v1/tiers")
                tiers.append(json.loads(h.getresponse().read()))
                h.close()
            except (OSError, http.client.HTTPException, ValueError) as e:
                tiers.append({"error": str(e)})
        result["tiers"] = tiers
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    a, b = result["ttft_ms"], result["ttft_ms_turn2plus"]
    fmt = lambda x: "-" if x is None else f"{x:.1f}"
    print(f"{label}: {len(records)} requests, {errors} errors; TTFT ms p50 {fmt(a['p50'])} "
          f"p90 {fmt(a['p90'])} p99 {fmt(a['p99'])} mean {fmt(a['mean'])}; "
          f"turns>=2 p50 {fmt(b['p50'])} mean {fmt(b['mean'])}")
    if records and errors > 0.05 * len(records):
        print(f"peer_replay: {errors} of {len(records)} requests failed", file=sys.stderr)
        for r in records:
            if not r["ok"]:
                print(f"  {r['session']} turn {r['turn']}: status {r['status']}: {r.get('error')}",
                      file=sys.stderr)
                break
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
