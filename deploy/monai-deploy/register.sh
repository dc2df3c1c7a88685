#!/usr/bin/env bash
# Register the OCT glaucoma MAP with a running MONAI Deploy platform (Informatics Gateway REST on
# :5000, Workflow Manager on :5001 as in MONAI Deploy Express 0.6.0). UNTESTED here: no MONAI
# Deploy platform runs in this project's CI. Edit the JSON files first (PACS address, AE titles).
#
#   MIG=http://localhost:5000 MWM=http://localhost:5001 bash deploy/monai-deploy/register.sh
set -euo pipefail
cd "$(dirname "$0")"
MIG=${MIG:-http://localhost:5000}
MWM=${MWM:-http://localhost:5001}
post() { curl --fail-with-body -sS -X POST -H 'Content-Type: application/json' --data @"$2" "$1"; echo; }

post "$MIG/config/ae" informatics-gateway/ae.json                   # listening AE OCT-GLAUCOMA
post "$MIG/config/source" informatics-gateway/source.json           # the PACS may send to it
post "$MIG/config/destination" informatics-gateway/destination.json # results go back to the PACS
curl -sS "$MIG/config/destination/cecho/PACS"; echo                 # C-ECHO as MONAISCU
post "$MWM/workflows" workflow-manager/oct-glaucoma-workflow.json   # -> {"workflow_id": ...}
