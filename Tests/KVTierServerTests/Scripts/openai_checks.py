"""The official `openai` Python client against kvtierd over its Unix socket.

usage: openai_checks.py SOCKET

Prints one JSON object: check name -> {"ok": bool, "detail": str}. Exit status 0 when every
check passed. Run by OpenAIClientTests in a venv it makes (pinned openai version there).
"""
import json
import sys

import openai

try:  # openai 3.x uses httpx2; earlier versions httpx
    import httpx2 as httpx
except ImportError:
    import httpx

sock = sys.argv[1]
client = openai.OpenAI(
    api_key="unused",
    base_url="http://kvtier/v1",
    http_client=openai.DefaultHttpxClient(transport=httpx.HTTPTransport(uds=sock)),
    max_retries=0,
)
results = {}


def check(name):
    def run(fn):
        try:
            ok, detail = fn()
        except Exception as e:  # a check that raised failed, with the reason
            ok, detail = False, f"{type(e).__name__}: {e}"
        results[name] = {"ok": bool(ok), "detail": str(detail)[:400]}
        return fn

    return run


def refused(fn, field):
    """The call must fail with 400 and a message naming `field`."""
    try:
        fn()
    except openai.BadRequestError as e:
        message = e.body.get("message", "") if isinstance(e.body, dict) else str(e)
        return field in message, message
    return False, "accepted (200): the field was silently ignored"


model = client.models.list().data[0].id


@check("models")
def _():
    same = client.models.retrieve(model)
    return " " not in model and same.id == model, f"id {model!r}, retrieve -> {same.id!r}"


@check("completion with max_completion_tokens")
def _():
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name three colors."}],
        max_completion_tokens=5, temperature=0)
    n = r.usage.completion_tokens
    return r.choices[0].message.content and n <= 5 and r.choices[0].message.role == "assistant", \
        f"{n} tokens: {r.choices[0].message.content!r}"


@check("stream: role first, usage last")
def _():
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_completion_tokens=8,
        temperature=0, stream=True, stream_options={"include_usage": True}))
    first = chunks[0].choices[0].delta
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    ok = first.role == "assistant" and text and last.choices == [] and last.usage is not None
    return ok, f"first delta {first}, text {text!r}, last usage {last.usage}"


@check("content as text parts, developer role, null assistant content")
def _():
    r = client.chat.completions.create(model=model, max_completion_tokens=4, temperature=0, messages=[
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Hi, "}, {"type": "text", "text": "who are you?"}]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "Go on."}])
    return r.choices[0].message.content is not None, r.choices[0].message.content


@check("session_id through extra_body reuses the history")
def _():
    history = [{"role": "user", "content": "What is the capital of France?"}]
    r1 = client.chat.completions.create(model=model, messages=history, max_completion_tokens=12, temperature=0,
                                        extra_body={"session_id": "sdk-check"})
    history += [{"role": "assistant", "content": r1.choices[0].message.content},
                {"role": "user", "content": "And of Spain?"}]
    r2 = client.chat.completions.create(model=model, messages=history, max_completion_tokens=12, temperature=0,
                                        extra_body={"session_id": "sdk-check"})
    extra = r2.model_extra or {}
    reused = (extra.get("kvtier") or {}).get("tokens_reused", 0)
    return extra.get("session_id") == "sdk-check" and reused > 20, f"session {extra.get('session_id')}, reused {reused}"


@check("three chats without session_id, interleaved: each reuses its whole history")
def _():
    system = {"role": "system", "content": "You are a concise assistant for a team of engineers. Answer in one "
              "short sentence, and say so when you do not know."}
    chats = [[system, {"role": "user", "content": q}] for q in
             ["What is a cache?", "What is a queue?", "What is a daemon?"]]
    seen, details, ok = [None] * 3, [], True
    for turn in range(3):
        for c, history in enumerate(chats):
            r = client.chat.completions.create(model=model, messages=history, max_completion_tokens=8,
                                                temperature=0)
            extra = r.model_extra or {}
            reused = (extra.get("kvtier") or {}).get("tokens_reused", 0)
            if turn > 0:
                # Everything the server computed for this chat before: its prompt and its reply
                # (the reply's last token was sampled, never fed).
                whole = seen[c][1] + seen[c][2] - 1
                ok = ok and extra.get("session_id") == seen[c][0] and reused >= whole
                details.append(f"{c}.{turn + 1}: {reused}/{r.usage.prompt_tokens} (history {whole})")
            seen[c] = (extra.get("session_id"), r.usage.prompt_tokens, r.usage.completion_tokens)
            history += [{"role": "assistant", "content": r.choices[0].message.content},
                        {"role": "user", "content": f"Say more, part {turn + 2}."}]
    ok = ok and len({s[0] for s in seen}) == 3
    return ok, "; ".join(details)


@check("legacy completions: text, stream, and the prefix reused")
def _():
    # Longer than two 16-token links of the prefix index, so the next request finds it.
    prompt = ("A painter mixes colours all day long in a small studio by the sea, and she knows "
              "that the three primary colours are red, blue and")
    r = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0)
    text = r.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt=prompt, max_tokens=6, temperature=0, stream=True) if c.choices)
    again = client.completions.create(model=model, prompt=prompt + text + " Also", max_tokens=4, temperature=0)
    reused = ((again.model_extra or {}).get("kvtier") or {}).get("tokens_reused", 0)
    two = client.completions.create(model=model, prompt=prompt, max_tokens=4, n=2, temperature=1.0, seed=3)
    ok = (r.object == "text_completion" and text and streamed == text and r.usage.completion_tokens <= 6
          and reused >= r.usage.prompt_tokens and [c.index for c in two.choices] == [0, 1])
    return ok, f"{text!r}, streamed {streamed!r}, next prompt reused {reused} (first prompt {r.usage.prompt_tokens}), " \
               f"n=2: {[c.text for c in two.choices]}"


@check("logprobs: one per token, the text's own, alternatives sorted")
def _():
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a fruit."}], max_completion_tokens=8,
        temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    text = bytes(b for t in content for b in t.bytes).decode("utf-8", "replace")
    greedy = all(t.top_logprobs[0].token == t.token for t in content)
    ordered = all(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
                  and t.logprob <= 0 for t in content)
    stream = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a fruit."}], max_completion_tokens=8,
        temperature=0, logprobs=True, stream=True))
    streamed = [t.token for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    ok = text == r.choices[0].message.content and greedy and ordered and streamed == [t.token for t in content]
    return ok, f"{len(content)} tokens for {r.choices[0].message.content!r}; streamed {len(streamed)}"


@check("n choices: the prompt computed once, each choice sampled on its own, streamed by index")
def _():
    messages = [{"role": "system", "content": "You are a poet. Answer with one line of verse."},
                {"role": "user", "content": "Write a line about the sea at night, with the moon and a boat."}]
    r = client.chat.completions.create(model=model, messages=messages, n=3, max_completion_tokens=12,
                                       temperature=1.0, seed=7)
    reports = [(c.model_extra or {}).get("kvtier") or {} for c in r.choices]
    later_computed = [k.get("tokens_recomputed", -1) for k in reports[1:]]
    texts = [c.message.content for c in r.choices]
    generated = sum(k.get("tokens_generated", 0) for k in reports)
    ok = ([c.index for c in r.choices] == [0, 1, 2] and all(texts) and len(set(texts)) > 1
          and all(0 <= n <= 1 for n in later_computed) and r.usage.completion_tokens == generated
          and reports[0].get("tokens_recomputed", 0) >= r.usage.prompt_tokens - 1)
    stream = list(client.chat.completions.create(model=model, messages=messages, n=2, max_completion_tokens=6,
                                                 temperature=1.0, seed=7, stream=True))
    roles = sorted(c.choices[0].index for c in stream if c.choices and c.choices[0].delta.role == "assistant")
    finished = sorted(c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason)
    streamed = ["".join(c.choices[0].delta.content or "" for c in stream if c.choices and c.choices[0].index == k)
                for k in (0, 1)]
    ok = ok and roles == [0, 1] and finished == [0, 1] and all(streamed)
    return ok, f"texts {texts}, later choices computed {later_computed}; stream roles {roles}, " \
               f"finished {finished}, texts {streamed}"


for name, field, call in [
    ("tools refused", "tools", lambda: client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], tools=[{"type": "function", "function": {"name": "f"}}])),
    ("response_format refused", "response_format.type", lambda: client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], response_format={"type": "json_object"})),
    ("legacy echo refused", "echo", lambda: client.completions.create(model=model, prompt="hi", echo=True)),
    ("n over 16 refused", "n:", lambda: client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], n=17)),
    ("top_logprobs over 20 refused", "top_logprobs", lambda: client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=21)),
    ("image refused", "messages[0].content[1].type", lambda: client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])),
    ("wrong type named in JSON terms", "messages[0].content: expected a string or a list of text parts",
     lambda: client.chat.completions.create(model=model, messages=[{"role": "user", "content": 5}])),
]:
    check(name)(lambda field=field, call=call: refused(call, field))

print(json.dumps(results, indent=1, sort_keys=True))
sys.exit(0 if all(r["ok"] for r in results.values()) else 1)
