#!/usr/bin/env python3
"""Independent float reference forward pass for SmolLM2-135M-Instruct (GGUF, llama arch).

Pure numpy: parses the GGUF v3 container itself, dequantizes F32/F16/Q4_0/Q4_1/Q8_0
tensors, and runs the llama forward pass in float64 with teacher forcing over one
sequence (positions 0..N-1). Shares no code with the Swift decoder in this repo.

Usage:
  python3 reference_forward.py --model PATH.gguf --ids IDS.json --count N --out OUT.json

IDS.json is {"ids": [...]} (or a bare list); the first N ids are used.
"""
import os

# Keep BLAS light on shared machines unless the caller says otherwise.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "2")

import argparse
import hashlib
import json
import struct
import sys
import time

import numpy as np

DTYPE = np.float64

# ----------------------------------------------------------------------------- GGUF


class GGUF:
    # metadata value types
    _SCALAR = {
        0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
        6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
    }
    _NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4",
           7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}

    def __init__(self, path):
        self.path = path
        self.buf = np.memmap(path, dtype=np.uint8, mode="r")
        self.mv = memoryview(self.buf)
        self.pos = 0
        magic = bytes(self.mv[0:4])
        if magic != b"GGUF":
            raise ValueError(f"not a GGUF file (magic {magic!r})")
        self.pos = 4
        self.version = self._u32()
        if self.version < 2:
            raise ValueError(f"unsupported GGUF version {self.version}")
        n_tensors = self._u64()
        n_kv = self._u64()
        self.meta = {}
        for _ in range(n_kv):
            key = self._str()
            vtype = self._u32()
            self.meta[key] = self._value(vtype)
        self.tensors = {}
        for _ in range(n_tensors):
            name = self._str()
            n_dims = self._u32()
            dims = [self._u64() for _ in range(n_dims)]
            ttype = self._u32()
            off = self._u64()
            self.tensors[name] = (dims, ttype, off)
        align = int(self.meta.get("general.alignment", 32))
        self.data_offset = (self.pos + align - 1) // align * align

    # primitive readers
    def _unpack(self, fmt, size):
        v = struct.unpack_from(fmt, self.mv, self.pos)[0]
        self.pos += size
        return v

    def _u32(self):
        return self._unpack("<I", 4)

    def _u64(self):
        return self._unpack("<Q", 8)

    def _str(self):
        n = self._u64()
        s = bytes(self.mv[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def _value(self, vtype):
        if vtype in self._SCALAR:
            fmt, size = self._SCALAR[vtype]
            return self._unpack(fmt, size)
        if vtype == 8:
            return self._str()
        if vtype == 9:
            atype = self._u32()
            n = self._u64()
            if atype in self._NP:
                dt = np.dtype(self._NP[atype])
                arr = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos).copy()
                self.pos += n * dt.itemsize
                return arr.astype(bool).tolist() if atype == 7 else arr.tolist()
            return [self._value(atype) for _ in range(n)]
        raise ValueError(f"unknown GGUF metadata type {vtype}")

    # tensors
    def tensor(self, name, dtype=DTYPE):
        """Dequantized tensor, shaped with numpy (slowest-first) order, i.e. reversed GGUF dims.
        A GGUF weight with dims [in, out] comes back as an (out, in) matrix."""
        dims, ttype, off = self.tensors[name]
        n = int(np.prod(dims)) if dims else 1
        start = self.data_offset + off
        shape = tuple(reversed(dims))
        if ttype == 0:  # F32
            out = np.frombuffer(self.buf, dtype="<f4", count=n, offset=start)
        elif ttype == 1:  # F16
            out = np.frombuffer(self.buf, dtype="<f2", count=n, offset=start)
        elif ttype in (2, 3, 8):
            out = _dequant_blocks(self.buf, start, n, ttype)
        else:
            raise ValueError(f"tensor {name}: unsupported ggml type {ttype}")
        return np.asarray(out, dtype=dtype).reshape(shape)


QK = 32
_BLOCK_BYTES = {2: 18, 3: 20, 8: 34}  # Q4_0, Q4_1, Q8_0


def _dequant_blocks(buf, start, n, ttype):
    assert n % QK == 0
    nb = n // QK
    bsz = _BLOCK_BYTES[ttype]
    raw = np.frombuffer(buf, dtype=np.uint8, count=nb * bsz, offset=start).reshape(nb, bsz)
    d = raw[:, 0:2].copy().view("<f2").astype(np.float64)  # (nb, 1)
    if ttype == 8:  # Q8_0: f16 d, int8 qs[32]; x = d*q
        q = raw[:, 2:34].copy().view(np.int8).astype(np.float64)
        return (d * q).reshape(-1)
    if ttype == 2:  # Q4_0: f16 d, u8 qs[16]; x = d*(q-8)
        qs = raw[:, 2:18]
        m = None
    else:  # Q4_1: f16 d, f16 m, u8 qs[16]; x = d*q + m
        m = raw[:, 2:4].copy().view("<f2").astype(np.float64)
        qs = raw[:, 4:20]
    lo = (qs & 0x0F).astype(np.float64)   # elements 0..15
    hi = (qs >> 4).astype(np.float64)     # elements 16..31
    q = np.concatenate([lo, hi], axis=1)  # (nb, 32)
    if m is None:
        return (d * (q - 8.0)).reshape(-1)
    return (d * q + m).reshape(-1)


# ----------------------------------------------------------------------------- model


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_tables(n_pos, n_rot, base):
    # NORMAL (GPT-J style, llama.cpp GGML_ROPE_TYPE_NORMAL): rotate adjacent pairs
    # (x[2i], x[2i+1]) by theta_i = pos * base^(-2i/n_rot).
    i = np.arange(n_rot // 2, dtype=np.float64)
    inv = base ** (-2.0 * i / n_rot)
    ang = np.arange(n_pos, dtype=np.float64)[:, None] * inv[None, :]  # (T, n_rot/2)
    return np.cos(ang), np.sin(ang)


def apply_rope(x, cos, sin, n_rot, mode):
    """x: (T, H, D). cos/sin: (T, n_rot/2)."""
    out = x.copy()
    c = cos[:, None, :]
    s = sin[:, None, :]
    if mode == "norm":
        x0 = x[..., 0:n_rot:2]
        x1 = x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = x0 * c - x1 * s
        out[..., 1:n_rot:2] = x0 * s + x1 * c
    elif mode == "neox":  # diagnostic only: rotate (x[i], x[i + n_rot/2])
        h = n_rot // 2
        x0 = x[..., 0:h]
        x1 = x[..., h:n_rot]
        out[..., 0:h] = x0 * c - x1 * s
        out[..., h:n_rot] = x0 * s + x1 * c
    else:
        raise ValueError(mode)
    return out


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward_hidden(g, ids, rope_mode="norm", chunk=256, log=print):
    md = g.meta
    arch = md["general.architecture"]
    n_layer = int(md[f"{arch}.block_count"])
    n_embd = int(md[f"{arch}.embedding_length"])
    n_head = int(md[f"{arch}.attention.head_count"])
    n_head_kv = int(md[f"{arch}.attention.head_count_kv"])
    eps = float(md[f"{arch}.attention.layer_norm_rms_epsilon"])
    base = float(md.get(f"{arch}.rope.freq_base", 10000.0))
    head_dim = n_embd // n_head
    n_rot = int(md.get(f"{arch}.rope.dimension_count", head_dim))
    group = n_head // n_head_kv
    scale = 1.0 / np.sqrt(head_dim)
    T = len(ids)

    emb = g.tensor("token_embd.weight")  # (n_vocab, n_embd)
    x = emb[np.asarray(ids)].astype(DTYPE)
    del emb
    cos, sin = rope_tables(T, n_rot, base)

    for il in range(n_layer):
        t0 = time.time()
        p = f"blk.{il}."
        wq = g.tensor(p + "attn_q.weight")
        wk = g.tensor(p + "attn_k.weight")
        wv = g.tensor(p + "attn_v.weight")
        wo = g.tensor(p + "attn_output.weight")

        h = rms_norm(x, g.tensor(p + "attn_norm.weight"), eps)
        q = (h @ wq.T).reshape(T, n_head, head_dim)
        k = (h @ wk.T).reshape(T, n_head_kv, head_dim)
        v = (h @ wv.T).reshape(T, n_head_kv, head_dim)
        q = apply_rope(q, cos, sin, n_rot, rope_mode)
        k = apply_rope(k, cos, sin, n_rot, rope_mode)

        attn = np.empty((T, n_head, head_dim), dtype=DTYPE)
        qh = np.ascontiguousarray(q.transpose(1, 0, 2))  # (H, T, D)
        kh = np.ascontiguousarray(k.transpose(1, 0, 2))  # (Hkv, T, D)
        vh = np.ascontiguousarray(v.transpose(1, 0, 2))
        for s in range(0, T, chunk):
            e = min(T, s + chunk)
            qi = np.arange(s, e)[:, None]
            kj = np.arange(0, e)[None, :]
            mask = kj > qi  # causal
            for hh in range(n_head):
                kv = hh // group
                sc = (qh[hh, s:e] @ kh[kv, :e].T) * scale  # (c, e)
                sc[mask] = -np.inf
                sc -= sc.max(axis=1, keepdims=True)
                pr = np.exp(sc)
                pr /= pr.sum(axis=1, keepdims=True)
                attn[s:e, hh] = pr @ vh[kv, :e]
        x = x + attn.reshape(T, n_embd) @ wo.T
        del wq, wk, wv, wo, q, k, v, qh, kh, vh, attn

        h = rms_norm(x, g.tensor(p + "ffn_norm.weight"), eps)
        gate = h @ g.tensor(p + "ffn_gate.weight").T
        up = h @ g.tensor(p + "ffn_up.weight").T
        x = x + (silu(gate) * up) @ g.tensor(p + "ffn_down.weight").T
        del gate, up, h
        log(f"layer {il:2d} done in {time.time() - t0:.2f}s")

    return rms_norm(x, g.tensor("output_norm.weight"), eps)


def output_matrix(g):
    name = "output.weight" if "output.weight" in g.tensors else "token_embd.weight"  # tied
    return g.tensor(name)  # (n_vocab, n_embd)


# ----------------------------------------------------------------------------- CLI


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help='JSON file: {"ids": [...]} or a list')
    ap.add_argument("--count", type=int, required=True, help="number of ids (positions) to run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sample-positions", default=None,
                    help="comma-separated positions for full-logit samples (default 0,1,100,1000,N-1)")
    ap.add_argument("--rope", default="norm", choices=["norm", "neox"],
                    help="RoPE layout; 'norm' is what llama.cpp uses for LLAMA-arch GGUFs. 'neox' is a diagnostic.")
    ap.add_argument("--chunk", type=int, default=256, help="query rows per attention/logit chunk")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    log = (lambda *x: None) if a.quiet else (lambda *x: print(*x, file=sys.stderr, flush=True))

    t_start = time.time()
    with open(a.ids) as f:
        obj = json.load(f)
    all_ids = obj["ids"] if isinstance(obj, dict) else obj
    if len(all_ids) < a.count:
        sys.exit(f"ids file has {len(all_ids)} ids, need {a.count}")
    ids = [int(t) for t in all_ids[:a.count]]
    N = len(ids)

    g = GGUF(a.model)
    n_vocab = len(g.meta["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in g.meta else None
    log(f"GGUF v{g.version}: {len(g.tensors)} tensors, {len(g.meta)} kv, data offset {g.data_offset}")

    xf = forward_hidden(g, ids, rope_mode=a.rope, chunk=a.chunk, log=log)
    W = output_matrix(g)
    if n_vocab is not None:
        assert W.shape[0] == n_vocab, (W.shape, n_vocab)

    if a.sample_positions:
        samp = [int(s) for s in a.sample_positions.split(",")]
    else:
        samp = [0, 1, 100, 1000, N - 1]
    samp = sorted({p for p in samp if 0 <= p < N})

    top1, top5, samples = [], [], {}
    nll_sum, nll_n = 0.0, 0
    for s in range(0, N, a.chunk):
        e = min(N, s + a.chunk)
        lg = xf[s:e] @ W.T  # (c, V)
        am = np.argmax(lg, axis=1)
        part = np.argpartition(-lg, 5, axis=1)[:, :5]
        for r in range(e - s):
            pos = s + r
            row = lg[r]
            idx = part[r][np.argsort(-row[part[r]], kind="stable")]
            top1.append(int(am[r]))
            top5.append([[int(i), round(float(row[i]), 6)] for i in idx])
            if pos + 1 < N:
                mx = row.max()
                lse = mx + np.log(np.exp(row - mx).sum())
                nll_sum += float(lse - row[ids[pos + 1]])
                nll_n += 1
            if pos in samp:
                samples[pos] = [round(float(v), 4) for v in row]
    runtime = time.time() - t_start

    out = {
        "model_sha256": sha256_file(a.model),
        "dtype": "float64",
        "rope_mode": a.rope,
        "n_positions": N,
        "ids": ids,
        "top1": top1,
        "top5": top5,
        "logits_samples": {"positions": samp, "logits": [samples[p] for p in samp]},
        "mean_next_token_nll": nll_sum / max(1, nll_n),
        "runtime_seconds": round(runtime, 1),
    }
    with open(a.out, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    log(f"wrote {a.out}: N={N}, mean next-token NLL={out['mean_next_token_nll']:.4f}, runtime {runtime:.1f}s")


if __name__ == "__main__":
    main()
