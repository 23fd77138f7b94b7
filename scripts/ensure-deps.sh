#!/usr/bin/env bash
# Installs what the tests need from outside Cargo, only if it is missing:
# Debian packages (haproxy for the cluster test, prometheus for promtool, tinyproxy for
# the egress-proxy test in tests/security, chromium for the console test) and a Python
# venv with the official openai and anthropic SDKs for the SDK compatibility tests (and
# grpcio with opentelemetry-proto for the OTLP receiver of the traces test).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v tinyproxy >/dev/null 2>&1 || need_apt+=(tinyproxy)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${need_apt[*]}" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}") >/dev/null \
      || echo "warning: could not install ${need_apt[*]}; tests that need them will fail" >&2
  else
    echo "warning: missing ${need_apt[*]} and cannot apt-get install as non-root" >&2
  fi
fi

# grpcio and opentelemetry-proto: the OTLP receiver of the traces test (tests/otlp_receiver.py).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import openai, anthropic, grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc' 2>/dev/null; then
  echo "creating .venv with the openai and anthropic SDKs, grpcio and opentelemetry-proto" >&2
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check openai anthropic grpcio opentelemetry-proto >/dev/null
fi

# The Codex CLI (npm `@openai/codex`, its native binary comes in a platform package) for
# the Codex end-to-end test, in .tools/codex.
if [ ! -x .tools/codex/node_modules/.bin/codex ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "installing the Codex CLI into .tools/codex" >&2
    mkdir -p .tools/codex
    npm install --prefix .tools/codex --no-audit --no-fund --silent @openai/codex >/dev/null \
      || echo "warning: could not install @openai/codex; the Codex test will fail" >&2
  else
    echo "warning: npm is missing; the Codex test will fail" >&2
  fi
fi

# The Claude Code CLI (npm `@anthropic-ai/claude-code`, native binary in a platform
# package) for the Claude Code end-to-end test, in .tools/claude.
if [ ! -x .tools/claude/node_modules/.bin/claude ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "installing the Claude Code CLI into .tools/claude" >&2
    mkdir -p .tools/claude
    npm install --prefix .tools/claude --no-audit --no-fund --silent @anthropic-ai/claude-code >/dev/null \
      || echo "warning: could not install @anthropic-ai/claude-code; the Claude Code test will fail" >&2
  else
    echo "warning: npm is missing; the Claude Code test will fail" >&2
  fi
fi

# playwright-core (the driver only: it downloads no browser; the test points it at
# /usr/bin/chromium) for the console test, in .tools/playwright.
if [ ! -d .tools/playwright/node_modules/playwright-core ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "installing playwright-core into .tools/playwright" >&2
    mkdir -p .tools/playwright
    npm install --prefix .tools/playwright --no-audit --no-fund --silent playwright-core@1 >/dev/null \
      || echo "warning: could not install playwright-core; the console test will fail" >&2
  else
    echo "warning: npm is missing; the console test will fail" >&2
  fi
fi
