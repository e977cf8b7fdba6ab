#!/bin/bash
# Run once by the influxdb:2 image after its DOCKER_INFLUXDB_INIT_MODE=setup
# (scripts in /docker-entrypoint-initdb.d; the image exports
# DOCKER_INFLUXDB_INIT_BUCKET_ID to them): maps the InfluxQL database
# "ironbridge" (retention policy "autogen") onto the bucket the gateway
# writes, so Grafana's InfluxQL dashboards (dashboards/) query it through
# InfluxDB 2.x's 1.x-compatible /query API.
set -euo pipefail
influx v1 dbrp create \
  --bucket-id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
  --db "${DOCKER_INFLUXDB_INIT_BUCKET}" \
  --rp autogen \
  --default \
  --org "${DOCKER_INFLUXDB_INIT_ORG}"
# A read-only InfluxQL login for Grafana (the data source in
# dashboards/provisioning/datasources/ logs in with user and password).
influx v1 auth create \
  --username grafana \
  --password "${INFLUXDB_GRAFANA_PASSWORD}" \
  --read-bucket "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
  --org "${DOCKER_INFLUXDB_INIT_ORG}"
