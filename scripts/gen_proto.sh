#!/bin/sh
# Regenerate the RustDesk protobuf modules (commit the output; runtime needs only protobuf).
set -eu
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m grpc_tools.protoc -I hubbub/wire/rustdesk \
    --python_out=hubbub/wire/rustdesk --pyi_out=hubbub/wire/rustdesk \
    hubbub/wire/rustdesk/rendezvous.proto
# The generated stub uses bare Mapping in a few signatures; strict mypy flags that.
pyi=hubbub/wire/rustdesk/rendezvous_pb2.pyi
{ printf '# mypy: disable-error-code="type-arg"\n'; cat "$pyi"; } > "$pyi.tmp" && mv "$pyi.tmp" "$pyi"
