#!/bin/sh
# The baseline: what operators script by hand today. Walk the runners of config.toml one by one
# with curl: verify the token; when GitLab refuses it, reset it with the admin token, sed the new
# token into config.toml, and restart the service, once per runner.
#
# Usage: baseline.sh CONFIG GITLAB_URL ADMIN_TOKEN_FILE SERVICE_SCRIPT
# (the tokens pass through the command line here: this is a benchmark baseline, not a tool)
set -eu
config=$1 url=$2 admin=$(cat "$3") service=$4
grep -E '^[[:space:]]*(id|token) = ' "$config" | sed -E 's/^[[:space:]]*(id|token) = "?([^"]*)"?.*/\1 \2/' |
while read -r key value; do
  if [ "$key" = id ]; then id=$value; continue; fi
  token=$value
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url/api/v4/runners/verify" \
    -H 'Content-Type: application/json' -d "{\"token\":\"$token\"}")
  if [ "$code" = 403 ]; then
    new=$(curl -s -X POST -H "PRIVATE-TOKEN: $admin" "$url/api/v4/runners/$id/reset_authentication_token" |
      sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
    sed -i "s|$token|$new|" "$config"
    "$service" stop >/dev/null
    "$service" start >/dev/null
  fi
done
