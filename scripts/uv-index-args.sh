#!/usr/bin/env sh
# Print the uv options that point uv at the indexes pip is configured with (pip.conf, PIP_*
# variables): index-url, extra-index-url and find-links. uv reads no pip configuration, so
# without these it would miss a local wheel mirror pip uses (and download, say, a multi-GB
# PyTorch that lies on disk). Usage: uv pip install $(scripts/uv-index-args.sh .venv/bin/python) ...
python=${1:-python3}
"$python" -m pip config list 2>/dev/null \
  | sed -nE "s/^[^.]*\.(index-url|extra-index-url|find-links)='(.*)'$/\1 \2/p" \
  | awk '!seen[$0]++' \
  | while read -r key values; do
      for value in $values; do printf -- '--%s %s ' "$key" "$value"; done
    done
