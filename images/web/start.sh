#!/bin/sh
# loco-web's entry point: checks what the deployment must give it, then runs nginx in the
# foreground. One clear line and a non-zero exit when desktops.json is missing or unreadable.
set -eu
conf=${LOCO_DESKTOPS:-/etc/loco/web/desktops.json}
if [ ! -r "$conf" ]; then
  echo "loco-web: $conf is missing or unreadable: mount the deployment's desktops.json there (the chart's ConfigMap or Secret)" >&2
  exit 1
fi
if [ ! -s "$conf" ]; then
  echo "loco-web: $conf is empty: it must list the desktops ({\"desktops\": [...]})" >&2
  exit 1
fi
[ -w /tmp ] || { echo "loco-web: /tmp is not writable (nginx keeps its pid and temp files there): mount an emptyDir" >&2; exit 1; }
exec nginx -c /etc/nginx/nginx.conf -g 'daemon off;'
