#!/usr/bin/env bash
# Installs the system packages linewatch needs on Debian/Ubuntu: redis-server, Java (17 or newer: Debian 12's
# default-jre-headless is 17) and Maven (`linewatch up` embeds an Apache Kafka whose jars Maven fetches from
# Maven Central at set-up time); with LINEWATCH_WITH_TESTS=1 also PostgreSQL, docker-compose and Prometheus (its promtool checks deploy/'s alert rules); with LINEWATCH_WITH_BROWSER=1, chromium. Idempotent: when everything is present it returns without
# touching apt. It never starts the system redis/postgres services: the tests run their own
# instances on free ports.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# Each entry: "<package> <what proves it is installed: a command, or an absolute path glob>".
# The main job (linewatch up) needs redis-server and Java + Maven (its embedded Apache Kafka); the tests
# also run PostgreSQL and check the compose file (docker-compose).
wanted=("redis-server redis-server" "default-jre-headless java" "maven mvn")
if [[ "${LINEWATCH_WITH_TESTS:-0}" == "1" ]]; then
  wanted+=(
    "postgresql /usr/lib/postgresql/*/bin/initdb"
    "docker-compose docker-compose"
    "prometheus promtool"
  )
fi
if [[ "${LINEWATCH_WITH_BROWSER:-0}" == "1" ]]; then
  wanted+=("chromium chromium")
fi

present() {
  local probe=$1
  if [[ "$probe" == /* ]]; then
    compgen -G "$probe" >/dev/null
  else
    command -v "$probe" >/dev/null 2>&1
  fi
}

missing=()
for entry in "${wanted[@]}"; do
  read -r pkg probe <<<"$entry"
  if ! present "$probe" && ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if [[ $EUID -ne 0 ]]; then
  sudo=(sudo --preserve-env=DEBIAN_FRONTEND)
else
  sudo=()
fi

echo "install-system-deps: installing ${missing[*]}" >&2

# policy-rc.d exiting 101 tells invoke-rc.d not to start the services the packages ship; an
# existing policy-rc.d (e.g. in a Docker image) is left alone.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  added_policy=1
fi
remove_policy() {
  if [[ $added_policy -eq 1 ]]; then
    "${sudo[@]}" rm -f "$policy"
  fi
}
trap remove_policy EXIT

# apt's progress and debconf chatter go to a log that is shown only if something fails.
apt_log=$(mktemp)
if ! { "${sudo[@]}" apt-get update -qq &&
       "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
  cat "$apt_log" >&2
  rm -f "$apt_log"
  echo "install-system-deps: apt-get failed installing ${missing[*]}" >&2
  exit 1
fi
rm -f "$apt_log"
