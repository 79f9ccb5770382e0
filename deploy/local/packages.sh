#!/usr/bin/env bash
# Debian packages the build and the tests need, installed when missing (as root, with
# apt-get): libssl-dev and pkg-config (librdkafka is built with TLS and SASL), openssl and
# stunnel4 (the tests' TLS broker and storefront), sqlite3 (the indexes on the local broker's
# store), prometheus (promtool and the server the monitoring test scrapes a pipeline with),
# chromium and chromium-driver (the console's browser tests drive headless Chromium).
set -euo pipefail
need=()
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v stunnel4 >/dev/null 2>&1 || need+=(stunnel4)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[packages] installing ${need[*]}" >&2
    apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "[packages] missing Debian packages: ${need[*]} (sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

# Python tools the tests run (PyPI): kubernetes-validate checks deploy/k8s against the
# Kubernetes schemas, compose-spec parses and validates deploy/compose, openapi-spec-validator
# checks the listener's OpenAPI document and schemathesis fuzzes the API with it.
python_tools=(kubernetes-validate==1.37.0 compose-spec==0.2.1 openapi-spec-validator==0.9.0
  schemathesis==4.32.5)
if ! command -v kubernetes-validate >/dev/null 2>&1 || ! python3 -c "import compose_spec" 2>/dev/null \
  || ! command -v openapi-spec-validator >/dev/null 2>&1 \
  || ! st --version 2>/dev/null | grep -q 4.32.5; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq >/dev/null && apt-get install -y -qq python3-pip >/dev/null
    else
      echo "[packages] missing python3-pip (sudo apt-get install python3-pip)" >&2; exit 1
    fi
  fi
  echo "[packages] installing ${python_tools[*]} (PyPI)" >&2
  # Debian's own Python refuses installs outside a virtualenv (PEP 668) unless told.
  python3 -m pip install -q "${python_tools[@]}" 2>/dev/null \
    || python3 -m pip install -q --break-system-packages "${python_tools[@]}"
fi
