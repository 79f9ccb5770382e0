#!/usr/bin/env bash
# Refreshes the console's vendored libraries from npm, at the versions package-lock.json
# pins: htmx (requests and live refresh from HTML attributes) and Pico CSS (responsive,
# accessible defaults). The copies are committed and embedded in the binary, so users never
# run npm. Run after changing a version in package.json (then `npm install` updates the lock).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$work/"
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund >/dev/null)
cp "$work/node_modules/htmx.org/dist/htmx.min.js" "$here/htmx.min.js"
cp "$work/node_modules/@picocss/pico/css/pico.min.css" "$here/pico.min.css"
cp "$work/node_modules/htmx.org/LICENSE" "$here/htmx.LICENSE"
cp "$work/node_modules/@picocss/pico/LICENSE.md" "$here/pico.LICENSE.md"
echo "vendored: htmx $(node -p "require('$work/node_modules/htmx.org/package.json').version"), pico $(node -p "require('$work/node_modules/@picocss/pico/package.json').version")"
