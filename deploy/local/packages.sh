#!/usr/bin/env bash
# Debian packages the build and the tests need, installed when missing (as root, with
# apt-get): libssl-dev and pkg-config (librdkafka is built with TLS and SASL), openssl and
# stunnel4 (the tests' TLS broker), sqlite3 (the indexes on the local broker's store).
set -euo pipefail
need=()
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v stunnel4 >/dev/null 2>&1 || need+=(stunnel4)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[packages] installing ${need[*]}" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "[packages] missing Debian packages: ${need[*]} (sudo apt-get install ${need[*]})" >&2
  exit 1
fi
