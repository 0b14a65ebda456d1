#!/bin/bash
# A two-turn chat with kvtierd using nothing but curl over its Unix socket, as a user would.
# Usage: curl-chat.sh SOCKET. Exits non-zero, saying why, if turn 2 does not reuse turn 1's KV.
set -euo pipefail
sock="$1"
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

curl -sf --unix-socket "$sock" http://kvtier/healthz | field 'd["status"]' | grep -qx ok

turn1=$(curl -sf --unix-socket "$sock" http://kvtier/v1/chat/completions \
    -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"temperature":0,"session_id":"curl"}')
reply=$(echo "$turn1" | field 'd["choices"][0]["message"]["content"]')
reused1=$(echo "$turn1" | field 'd["kvtier"]["tokens_reused"]')
echo "turn 1: reused $reused1: $reply"

body=$(REPLY_TEXT="$reply" python3 -c '
import json, os
print(json.dumps({"messages": [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": os.environ["REPLY_TEXT"]},
    {"role": "user", "content": "And of Germany?"}],
    "max_tokens": 16, "temperature": 0, "session_id": "curl"}))')
turn2=$(curl -sf --unix-socket "$sock" http://kvtier/v1/chat/completions -H 'Content-Type: application/json' -d "$body")
reused2=$(echo "$turn2" | field 'd["kvtier"]["tokens_reused"]')
echo "turn 2: reused $reused2: $(echo "$turn2" | field 'd["choices"][0]["message"]["content"]')"

[ "$reused1" -eq 0 ] || { echo "turn 1 reused $reused1 tokens of nothing"; exit 1; }
[ "$reused2" -gt 0 ] || { echo "turn 2 reused nothing"; exit 1; }

# Streaming: server-sent events ending in [DONE], the report in the last chunk.
events=$(curl -sfN --unix-socket "$sock" http://kvtier/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"Say hi."}],"max_tokens":4,"stream":true,"session_id":"curl-stream"}')
echo "$events" | grep -q '"kvtier"' || { echo "no kvtier report in the stream"; exit 1; }
echo "$events" | tail -n 2 | grep -qx 'data: \[DONE\]' || { echo "stream does not end with [DONE]"; exit 1; }
echo ok
