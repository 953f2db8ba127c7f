#!/usr/bin/env bash
# Render a churnseg report page in headless Chromium and save a screenshot.
# Usage: scripts/screenshot_report.sh REPORT.html OUT.png [WIDTHxHEIGHT]
# Chromium: apt-get update && apt-get install -y chromium (Debian). No network is used.
set -euo pipefail
html=$(realpath "$1")
png=$(realpath -m "$2")
size=${3:-1280,2400}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "chromium is not installed (apt-get install -y chromium)" >&2
  exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --screenshot="$png" --window-size="$size" \
  "file://$html" >/dev/null 2>&1
test -s "$png" || { echo "no screenshot written to $png" >&2; exit 1; }
echo "$png"
