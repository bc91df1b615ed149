#!/bin/bash
# preStop hook of the semantic-cache pod; both containers run it (they share the pod's network).
#
#   drain.sh envoy       Fail Envoy's /healthz, so readiness drops and the pod leaves the Service;
#                        wait DRAIN_MIN_SECONDS for endpoints and load balancers to notice; start a
#                        graceful listener drain (keep-alive connections get "Connection: close" /
#                        GOAWAY); then wait until no request is in flight on the LLM listener, at
#                        most DRAIN_MAX_SECONDS. The kubelet sends SIGTERM when this returns.
#   drain.sh processor   Keep the processor running while Envoy still runs (streams still in
#                        flight pass their responses through it), at most
#                        DRAIN_MIN_SECONDS + DRAIN_MAX_SECONDS; it then gets SIGTERM and stops.
#
# Only bash is needed (/dev/tcp): the Envoy image has no curl. Envoy's admin API listens on
# 127.0.0.1:ENVOY_ADMIN_PORT.
set -u

ADMIN_PORT="${ENVOY_ADMIN_PORT:-9901}"
MIN_SECONDS="${DRAIN_MIN_SECONDS:-5}"
MAX_SECONDS="${DRAIN_MAX_SECONDS:-600}"
# The gauge of requests in flight on the listener (stat_prefix "llm" in files/envoy.yaml).
ACTIVE_STAT="${DRAIN_ACTIVE_STAT:-http.llm.downstream_rq_active}"

# admin METHOD PATH: one request to Envoy's admin API; prints the response (headers and body).
admin() {
  local fd
  exec {fd}<>"/dev/tcp/127.0.0.1/${ADMIN_PORT}" || return 1
  printf '%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n' \
    "$1" "$2" >&"${fd}"
  cat <&"${fd}"
  exec {fd}<&-
}

envoy_listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/${ADMIN_PORT}") 2>/dev/null
}

drain_envoy() {
  admin POST /healthcheck/fail >/dev/null 2>&1 || return 0 # Envoy is gone already
  sleep "${MIN_SECONDS}"
  admin POST '/drain_listeners?graceful' >/dev/null 2>&1 || return 0
  local deadline=$((SECONDS + MAX_SECONDS)) active
  while ((SECONDS < deadline)); do
    # Stats lines look like "http.llm.downstream_rq_active: 2"; no line (or no Envoy) = none.
    active="$(admin GET "/stats?filter=downstream_rq_active" 2>/dev/null |
      tr -d '\r' | sed -n "s/^${ACTIVE_STAT//./\\.}: *//p")"
    if [[ -z "${active}" || "${active}" == 0 ]]; then
      return 0
    fi
    sleep 1
  done
}

wait_for_envoy_exit() {
  sleep 1 # let Envoy's own hook start first
  local deadline=$((SECONDS + MIN_SECONDS + MAX_SECONDS))
  while ((SECONDS < deadline)) && envoy_listening; do
    sleep 1
  done
}

case "${1:-}" in
  envoy) drain_envoy ;;
  processor) wait_for_envoy_exit ;;
  *)
    echo "usage: $0 envoy|processor" >&2
    exit 2
    ;;
esac
exit 0
