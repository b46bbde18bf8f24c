#!/bin/sh
# Install every Debian package dsc needs to build and test. Idempotent: a
# package already installed is left alone. Needs root (or sudo).
set -eu
PKGS="build-essential pkg-config libjansson-dev libopenblas-openmp-dev libpcre2-dev xz-utils python3"
missing=""
for p in $PKGS; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        echo "[deps] $p: already installed"
    else
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    echo "[deps] nothing to install"
    exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "[deps] installing:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
echo "[deps] done"
