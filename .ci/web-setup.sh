#!/bin/sh
# Install what the browser and JS driver tests (tests/test_web*.py, tests/test_js.py) need on a
# fresh Debian machine: Debian's Chromium, Node.js with npm, the pinned npm packages in web/
# (onnxruntime-web, vendored into web exports, and playwright-core, which drives the system
# Chromium; no browser download from playwright), and those of the JS driver package in js/
# (onnxruntime-node, typescript). onnxruntime-node's install script would download GPU files
# from a host outside the npm registry; ONNXRUNTIME_NODE_INSTALL=skip keeps the CPU build that
# the npm package itself carries.
set -eu
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=""
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v node >/dev/null 2>&1 || need="$need nodejs"
command -v npm >/dev/null 2>&1 || need="$need npm"
if [ -n "$need" ]; then
  $SUDO apt-get update
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y $need
fi
npm ci --prefix web --no-audit --no-fund
ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix js --no-audit --no-fund
echo "web-setup: chromium $(chromium --version 2>/dev/null | sed 's/^Chromium //'), node $(node --version)"
