#!/bin/sh
# Prints the ACL files given, each placeholder password ">change-me-NAME" replaced by "#"
# and the sha256 of $ACL_NAME_PASSWORD (NAME in capitals: ACL_API_PASSWORD), so the file
# Redis loads holds no password in clear. Fails, printing nothing, when one is unset or
# empty. The HA start scripts run it (deploy/k8s/overlays/ha, compose's "ha" profile):
#   sh render.sh users.acl ha.acl > /run/redis/users.acl    # a Redis server
#   sh render.sh sentinel.acl > /run/sentinel/users.acl     # a sentinel
set -eu
if [ "$#" -eq 0 ]; then
  echo "usage: render.sh FILE..." >&2
  exit 2
fi
script=""
for name in $(cat "$@" | grep -o '>change-me-[a-z]*' | sed 's/^>change-me-//' | sort -u); do
  var="ACL_$(echo "${name}" | tr 'a-z' 'A-Z')_PASSWORD"
  eval "password=\${${var}:-}"
  if [ -z "${password}" ]; then
    echo "render.sh: ${var} is unset or empty" >&2
    exit 1
  fi
  hash=$(printf '%s' "${password}" | sha256sum | cut -d ' ' -f 1)
  script="${script}s/ >change-me-${name} / #${hash} /;"
done
rendered=$(cat "$@" | sed -e "${script}")
if printf '%s\n' "${rendered}" | grep -q '>change-me-'; then
  echo "render.sh: a placeholder is left (each must be followed by a space)" >&2
  exit 1
fi
printf '%s\n' "${rendered}"
