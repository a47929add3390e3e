#!/usr/bin/env bash
# Prepare this machine for social-accounts: the virtualenv with the project and its test extra,
# and (with --services) PostgreSQL, Redis, RabbitMQ, the Bluesky reference PDS and docker-compose.
# Idempotent: a second run only checks. Used by scripts/test, scripts/run and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

want_services=0
[ "${1:-}" = "--services" ] && want_services=1

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# ---- Python ---------------------------------------------------------------------------------
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  log "installing social-accounts and its test extra"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e '.[test]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

[ "$want_services" = 1 ] || exit 0

# ---- services (start only what does not answer) ---------------------------------------------
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 >/dev/null || { echo "PostgreSQL does not answer on 127.0.0.1:5432" >&2; exit 1; }

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.5; done
fi
redis-cli ping >/dev/null || { echo "Redis does not answer on 127.0.0.1:6379" >&2; exit 1; }

if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  if command -v rabbitmq-server >/dev/null; then
    log "starting RabbitMQ"
    rabbitmq-server -detached || true
    for _ in $(seq 1 60); do (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break; sleep 1; done
  fi
fi

# docker-compose 1.29 validates the production stack offline
if ! command -v docker-compose >/dev/null; then
  log "installing docker-compose (Debian package)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null
fi

# headless Chromium for tests/test_browser.py (Playwright drives /usr/bin/chromium; never `playwright install`)
if ! command -v chromium >/dev/null; then
  log "installing chromium (Debian package)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi

# the real Bluesky PDS for the Bluesky tests (cached outside the checkout)
if [ -f tests/peers/install-pds.sh ]; then
  log "installing the Bluesky reference PDS (cached)"
  bash tests/peers/install-pds.sh
fi
