#!/bin/bash
# Installs the Debian packages KVTier builds against, only those that are missing.
set -euo pipefail

packages=(pkg-config librocksdb-dev liblz4-dev libopenblas-dev libsystemd-dev libedit-dev python3-pip curl util-linux
    redis-server redis-tools)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
# pip may come from elsewhere (pyenv); then Debian's is not needed.
if python3 -m pip --version >/dev/null 2>&1; then
    missing=("${missing[@]/python3-pip/}")
fi
# The OpenAI client test makes a venv: Debian's python3 needs python3-venv for that.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
