#!/usr/bin/env bash
# Install a real Label Studio into its own virtual environment (.venv-ls at the repo root)
# for tests/test_label_studio_e2e.py. Idempotent: does nothing when the pinned version is
# already there. Label Studio's many exact pins stay out of the project's environment; the
# test only runs the `label-studio` executable as a subprocess.
#   LS_VENV=<dir>   where to create it (default: <repo>/.venv-ls)
#   LS_PYTHON=<exe> the interpreter to build it with (default: python3)
set -euo pipefail

VERSION="1.23.2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LS_VENV:-$ROOT/.venv-ls}"
PY="${LS_PYTHON:-python3}"

# Label Studio writes ~/.local/share/label-studio on every call unless given a data dir.
export LABEL_STUDIO_BASE_DATA_DIR="${LABEL_STUDIO_BASE_DATA_DIR:-$(mktemp -d)}"

installed_version() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null || true
from importlib.metadata import version
print(version("label-studio"))
PY
}

if [ -x "$VENV/bin/label-studio" ] && [ "$(installed_version)" = "$VERSION" ]; then
  echo "label-studio $VERSION already in $VENV"
  exit 0
fi

echo "installing label-studio==$VERSION into $VENV (about 1 GB, 1-2 minutes)"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "label-studio==$VERSION"
test "$(installed_version)" = "$VERSION"
echo "label-studio $VERSION installed in $VENV"
