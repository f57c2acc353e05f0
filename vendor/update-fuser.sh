#!/usr/bin/env bash
# Rebuilds vendor/fuser from the published fuser crate plus vendor/patches/*.patch.
#   vendor/update-fuser.sh [OUT]    (default OUT: vendor/fuser; PATCHES.md there is kept)
# The published source comes through cargo itself (a throw-away project that depends on the
# exact version, then `cargo fetch`), so the checksum is the one crates.io publishes.
# Check that the vendored tree is exactly this: vendor/update-fuser.sh /tmp/f && diff -r /tmp/f vendor/fuser
set -euo pipefail
VERSION=0.18.0
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/fuser}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

mkdir -p "$tmp/p/src"
cat > "$tmp/p/Cargo.toml" <<TOML
[package]
name = "fetch-fuser"
version = "0.0.0"
edition = "2021"
[dependencies]
fuser = "=$VERSION"
[workspace]
TOML
: > "$tmp/p/src/lib.rs"
(cd "$tmp/p" && cargo fetch -q)
src="$(cd "$tmp/p" && cargo metadata --format-version 1 |
  python3 -c 'import json,sys; m=json.load(sys.stdin); print([p["manifest_path"] for p in m["packages"] if p["name"]=="fuser"][0])')"
src="$(dirname "$src")"

# What the vendored copy keeps of the published crate: the library, its build script, the
# licence and the docs; examples, tests, Dockerfiles and cargo's own metadata files are dropped.
mkdir -p "$tmp/fuser"
cp -r "$src/src" "$src/Cargo.toml" "$src/build.rs" "$src/LICENSE.md" "$src/README.md" \
  "$src/CHANGELOG.md" "$tmp/fuser/"
for p in "$here"/patches/*.patch; do
  patch -s -d "$tmp/fuser" -p1 < "$p"
done
[ -f "$out/PATCHES.md" ] && cp "$out/PATCHES.md" "$tmp/fuser/"
[ -f "$out/UPSTREAM.md" ] && cp "$out/UPSTREAM.md" "$tmp/fuser/"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
cp -r "$tmp/fuser" "$out"
