#!/bin/sh
# Writes the device broker's config from the environment, then runs Mosquitto.
#   MQTT_LISTEN, MQTT_PORT        listener (default 127.0.0.1 1883: this device only)
#   MQTT_DATA_DIR                 persistence (default /mosquitto/data, the named volume)
#   MQTT_BRIDGE_ADDRESS           host:port of the site's broker; empty: no bridge
#   MQTT_BRIDGE_CLIENT_ID         default: vsm-bridge-$BALENA_DEVICE_UUID (or hostname)
#   MQTT_BRIDGE_USERNAME, MQTT_BRIDGE_PASSWORD, MQTT_BRIDGE_CAFILE (enables TLS)
#   MOSQUITTO_CONF_DIR            where the generated config goes (default /mosquitto/config)
#   MOSQUITTO_BIN                 default: mosquitto
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
conf_dir="${MOSQUITTO_CONF_DIR:-/mosquitto/config}"
conf="$conf_dir/mosquitto.conf"
listen="${MQTT_LISTEN:-127.0.0.1}"
port="${MQTT_PORT:-1883}"
data="${MQTT_DATA_DIR:-/mosquitto/data}"

case "$port" in ''|*[!0-9]*) echo "entrypoint: MQTT_PORT must be a number, got '$port'" >&2; exit 2;; esac

mkdir -p "$conf_dir" "$data"
{
    cat "$here/mosquitto.conf"
    echo "listener $port $listen"
    echo "persistence_location ${data%/}/"
    if [ -n "${MQTT_BRIDGE_ADDRESS:-}" ]; then
        client="${MQTT_BRIDGE_CLIENT_ID:-vsm-bridge-${BALENA_DEVICE_UUID:-$(hostname)}}"
        echo "connection vsm-bridge"
        echo "address $MQTT_BRIDGE_ADDRESS"
        echo "topic vsm/# both 1"
        echo "remote_clientid $client"
        # Mosquitto to Mosquitto: the remote does not echo our messages back.
        echo "try_private true"
        echo "cleansession false"
        echo "notifications true"
        echo "restart_timeout 2 30"
        echo "start_type automatic"
        if [ -n "${MQTT_BRIDGE_USERNAME:-}" ]; then
            echo "remote_username $MQTT_BRIDGE_USERNAME"
            echo "remote_password ${MQTT_BRIDGE_PASSWORD:-}"
        fi
        if [ -n "${MQTT_BRIDGE_CAFILE:-}" ]; then
            echo "bridge_cafile $MQTT_BRIDGE_CAFILE"
        fi
    fi
} >"$conf.tmp"
mv "$conf.tmp" "$conf"
exec "${MOSQUITTO_BIN:-mosquitto}" -c "$conf"
