#!/bin/bash
# Writes rabbitmq.conf from the environment, then runs the server in the foreground.
set -euo pipefail

{
  echo "listeners.tcp.default = 5672"
  echo "management.tcp.port = 15672"
  # guest may only log in from inside the container.
  echo "loopback_users.guest = true"
  if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
    echo "default_user = $RABBITMQ_DEFAULT_USER"
    echo "default_pass = ${RABBITMQ_DEFAULT_PASS:?RABBITMQ_DEFAULT_PASS must be set}"
    echo "default_user_tags.administrator = true"
  fi
} >"$RABBITMQ_CONFIG_FILE"
chmod 600 "$RABBITMQ_CONFIG_FILE"

if [ "${1:-}" = rabbitmq-server ]; then
  exec /usr/lib/rabbitmq/bin/rabbitmq-server
fi
exec "$@"
