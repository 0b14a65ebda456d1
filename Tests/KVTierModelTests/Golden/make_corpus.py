#!/usr/bin/env python3
"""Build the KVTier tokenizer golden corpus (tokenizer-corpus.json).

Two steps, both deterministic:

1. select  -- pick strings from ShareGPT V3 message values with a fixed seed,
              one bucket per feature we want covered (plain English, code, tabs,
              CJK, emoji / ZWJ / skin tones, long numbers, whitespace runs,
              contractions, punctuation runs, other scripts, ...), then append a
              fixed list of hand-written edge cases (special tokens, CRLF, ...).
2. tokenize -- feed every string, one file per string (bytes written verbatim,
              UTF-8, no trailing newline added), to llama.cpp's `llama-tokenize`
              and record the ids.

Usage:
  python3 make_corpus.py \
      --sharegpt ShareGPT_V3_unfiltered_cleaned_split.json \
      --model SmolLM2-135M-Instruct.Q4_1.gguf \
      --llama-tokenize /path/to/llama-tokenize \
      --out tokenizer-corpus.json

Selection rules (see BUCKETS below):
  * messages are read record by record (json.JSONDecoder.raw_decode after the
    opening '['); the ShareGPT file used here is truncated mid-record, reading
    stops cleanly at the first record that fails to decode;
  * only string message values are considered; values containing NUL or lone
    surrogates (not encodable as UTF-8) are skipped;
  * every bucket has a predicate (regex over the message value) and a target
    count; candidates are the matching messages in file order, and
    random.Random(SEED) (one generator, buckets processed in the listed order)
    draws the target count without replacement; a message used by an earlier
    bucket, or a text identical to an already chosen one, is skipped;
  * a message longer than MAX_CHARS (600 code points) is cut to a window of at
    most 600 code points that starts up to 120 code points (random, same rng)
    before the first match of the bucket's "anchor" regex, so the feature that
    put it into the bucket is kept; cuts are at code-point boundaries (a cut
    can split a grapheme cluster such as an emoji ZWJ sequence, on purpose);
  * the "crlf" bucket takes multi-line messages and replaces every "\\n" with
    "\\r\\n" (ShareGPT V3 contains no carriage returns at all) after the cut,
    then re-cuts to 600 code points (which may split a "\\r\\n" pair); those
    cases are marked with "derived": "crlf".
"""
import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile

SEED = 20250314
MAX_CHARS = 600
LEAD_MAX = 120

ASCII_ONLY = re.compile(r'^[\x20-\x7e\n]*$')
CODE_HINT = re.compile(r'```|[{};]|^\s*(def|class|import|#include|function|public|return)\b', re.M)

HAN = r'[\u4e00-\u9fff]'
KANA = r'[\u3040-\u30ff]'
HANGUL = r'[\uac00-\ud7af]'
EMOJI = r'[\U0001F300-\U0001FAFF\u2600-\u27BF]'


def has(p):
    r = re.compile(p, re.M)
    return lambda v: r.search(v) is not None


def english(v):
    return (ASCII_ONLY.match(v) is not None and CODE_HINT.search(v) is None
            and len(v) >= 40 and sum(c.isalpha() for c in v) > 0.7 * len(v))


def code(v):
    return '```' in v and re.search(r'^( {2,}|\t)\S', v, re.M) is not None and re.search(r'[{}()\[\]]', v) is not None


# (name, target count, predicate, anchor regex used to place the cut window)
BUCKETS = [
    ('english', 50, english, None),
    ('code', 40, code, r'```'),
    ('code_tabs', 15, lambda v: '\t' in v and re.search(r'[{}();=]', v) is not None, r'\t'),
    ('chinese', 15, lambda v: re.search(HAN, v) is not None and re.search(KANA, v) is None, HAN),
    ('japanese', 15, has(KANA), KANA),
    ('korean', 15, has(HANGUL), HANGUL),
    ('emoji_zwj', 10, has('\u200d'), '\u200d'),
    ('emoji_skin_tone', 8, has(r'[\U0001F3FB-\U0001F3FF]'), r'[\U0001F3FB-\U0001F3FF]'),
    ('emoji', 20, has(EMOJI), EMOJI),
    ('long_numbers', 20, has(r'\d[\d,.]{6,}\d'), r'\d[\d,.]{6,}\d'),
    ('space_runs', 15, has(r'\S {3,}\S'), r'\S {3,}\S'),
    ('newline_runs', 15, has(r'\n\n\n'), r'\n\n\n'),
    ('trailing_spaces', 10, has(r'\S +\n'), r'\S +\n'),
    ('contractions', 15, has(r"[a-z]'(s|re|ll|ve|d|m|t)\b"), r"[a-z]'(s|re|ll|ve|d|m|t)\b"),
    ('contractions_upper', 10, has(r"[A-Z]'(S|RE|LL|VE|D|M|T)\b"), r"[A-Z]'(S|RE|LL|VE|D|M|T)\b"),
    ('punctuation_runs', 15, has(r'[!?.,;:\-=*#~_/\\|<>]{4,}'), r'[!?.,;:\-=*#~_/\\|<>]{4,}'),
    ('cyrillic', 10, has(r'[\u0400-\u04ff]'), r'[\u0400-\u04ff]'),
    ('arabic', 10, has(r'[\u0600-\u06ff]'), r'[\u0600-\u06ff]'),
    ('devanagari', 6, has(r'[\u0900-\u097f]'), r'[\u0900-\u097f]'),
    ('greek', 5, has(r'[\u0370-\u03ff]'), r'[\u0370-\u03ff]'),
    ('thai', 5, has(r'[\u0e00-\u0e7f]'), r'[\u0e00-\u0e7f]'),
    ('hebrew', 5, has(r'[\u0590-\u05ff]'), r'[\u0590-\u05ff]'),
    ('control_chars', 5, has(r'[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]'), r'[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]'),
    ('crlf', 8, lambda v: v.count('\n') >= 3, r'\n'),
]

# Hand-written edge cases, appended after the ShareGPT selection.
HANDWRITTEN = [
    ' ',
    '   ',
    '\n',
    '\t',
    '\r\n',
    'Hello world',
    ' Hello world',
    'Hello  world',
    'trailing spaces   ',
    '\n\n\n',
    'a\n\n\nb',
    'line one\r\nline two\r\n\r\nline four\r\n',
    '<|im_start|>user\nhi<|im_end|>\n',
    '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n'
    '<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n',
    '<|endoftext|>',
    '<|im_end|><|im_end|>',
    'text before<|im_end|>text after',
    ' <|im_start|> spaced specials <|im_end|> ',
    '<|im_start |> near-miss, not a special token <|im_end|',
    '<filename>main.py\n<file_sep><repo_name>kvtier<gh_stars>10',
    '<jupyter_code>print(1)<jupyter_output>1<empty_output>',
    "don't can't won't it's we're they'll I've I'd I'm",
    "IT'S WE'RE THEY'LL I'VE I'D I'M DON'T",
    '3.14159265358979 12345678901234567890 1,234,567.89 0x7fff',
    '\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 \U0001F44D\U0001F3FD \U0001F3F3\ufe0f\u200d\U0001F308',
    '你好，世界！こんにちは、世界。안녕하세요 세계',
    'Привет, мир! مرحبا بالعالم नमस्ते दुनिया',
    '    def f(x):\n\treturn {x: [x, x]}\n\n\n',
    '!!!???...,,,;;;---===***',
    'printf("hi\\n"); path = "C:\\\\Users\\\\me"',
    'non\u00a0breaking\u00a0space and zero\u200bwidth',
    'caf\u00e9 na\u00efve (NFC) vs cafe\u0301 (NFD)',
    # extra probes (each checked against an independent Python BPE, all agree with llama.cpp)
    'don\u2019t (curly apostrophe) vs don\'t',
    "'S 's 'T 't 'Re 're",
    'a  \n  b',
    '  \n\n  x',
    'x   ',
    ' \n',
    '\r\n\r\n',
    '1234567890 a1b2c3 x = -1.5e-10',
    '\u0967\u0968\u0969 \u0663\u0664\u0665 \uff15\uff16 \u216b \u00bd \u00b2',
    '\ufeffBOM at start',
    'vertical\x0btab and form\x0cfeed and \x1c file separator',
    'ideographic\u3000space, NEL\x85here, line\u2028separator',
    '<|endoftext|>hello<|endoftext|>',
    '<|im_start|><|im_start|>',
    '\U0001F600\U0001F600\U0001F600 \U0001FAE0 \U0001D400\U0001D401',
]


def iter_records(path):
    """Yield ShareGPT records one by one from a (possibly truncated) JSON array."""
    dec = json.JSONDecoder()
    with open(path, encoding='utf-8') as f:
        s = f.read()
    i = s.index('[') + 1
    n = len(s)
    while True:
        while i < n and s[i] in ' \t\r\n,':
            i += 1
        if i >= n or s[i] == ']':
            return
        try:
            obj, j = dec.raw_decode(s, i)
        except json.JSONDecodeError:
            return  # truncated tail: stop cleanly
        yield obj
        i = j


def usable(v):
    if not isinstance(v, str) or not v or '\x00' in v:
        return False
    try:
        v.encode('utf-8')
    except UnicodeEncodeError:
        return False
    return True


def cut(v, anchor, rng):
    if len(v) <= MAX_CHARS:
        return v
    start = 0
    if anchor is not None:
        m = re.search(anchor, v, re.M)
        if m is not None:
            start = max(0, m.start() - rng.randint(0, LEAD_MAX))
    start = min(start, len(v) - MAX_CHARS)
    return v[start:start + MAX_CHARS]


def select(sharegpt_path):
    msgs = []
    for rec in iter_records(sharegpt_path):
        for k, m in enumerate(rec.get('conversations') or []):
            v = m.get('value')
            if usable(v):
                msgs.append((rec.get('id'), k, v))
    rng = random.Random(SEED)
    used, seen, cases = set(), set(), []
    for name, target, pred, anchor in BUCKETS:
        cands = [i for i, (_, _, v) in enumerate(msgs) if i not in used and pred(v)]
        order = rng.sample(cands, len(cands))
        got = 0
        for i in order:
            if got >= target:
                break
            cid, turn, v = msgs[i]
            text = cut(v, anchor, rng)
            case = {'category': name, 'source': f'sharegpt:{cid}#{turn}'}
            if name == 'crlf':
                text = text.replace('\n', '\r\n')[:MAX_CHARS]
                case['derived'] = 'crlf'
            if text in seen:
                continue
            used.add(i)
            seen.add(text)
            case['text'] = text
            cases.append(case)
            got += 1
        print(f'{name:20s} {got:3d}/{target:3d} (candidates {len(cands)})', file=sys.stderr)
    for t in HANDWRITTEN:
        if t not in seen:
            seen.add(t)
            cases.append({'category': 'handwritten', 'source': 'handwritten', 'text': t})
    return cases


def tokenize(cases, tool, model):
    """llama-tokenize -m MODEL --ids --log-disable --no-escape --no-bos -f FILE, one file per string."""
    with tempfile.TemporaryDirectory() as td:
        for n, c in enumerate(cases):
            p = os.path.join(td, f'{n:04d}.txt')
            with open(p, 'wb') as f:
                f.write(c['text'].encode('utf-8'))
            out = subprocess.run([tool, '-m', model, '--ids', '--log-disable', '--no-escape', '--no-bos', '-f', p],
                                 check=True, capture_output=True).stdout.decode('utf-8')
            line = [l for l in out.splitlines() if l.startswith('[')]
            assert len(line) == 1, out
            c['ids'] = json.loads(line[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--sharegpt', required=True)
    ap.add_argument('--model', required=True)
    ap.add_argument('--llama-tokenize', required=True)
    ap.add_argument('--out', required=True)
    a = ap.parse_args()
    cases = select(a.sharegpt)
    tokenize(cases, a.llama_tokenize, a.model)
    with open(a.model, 'rb') as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    doc = {
        'model_sha256': sha,
        'tool': 'llama-tokenize (llama.cpp vendored in llama-cpp-python 0.3.36)',
        'tool_args': '-m MODEL --ids --log-disable --no-escape --no-bos -f FILE (special tokens parsed: llama-tokenize default)',
        'seed': SEED,
        'cases': [{'text': c['text'], 'ids': c['ids'], 'category': c['category'], 'source': c['source'],
                   **({'derived': c['derived']} if 'derived' in c else {})} for c in cases],
    }
    with open(a.out, 'w', encoding='utf-8') as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write('\n')
    print(f'wrote {len(cases)} cases to {a.out}', file=sys.stderr)


if __name__ == '__main__':
    main()
