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

# A database made once by `label-studio init` (45-60 s of migrations) that the end-to-end
# test copies, so each test session starts Label Studio in seconds. Loopback-only test
# credentials, made here at random, sit beside it in credentials.json.
make_template() {
  local tpl="$VENV/e2e-template"
  if [ -f "$tpl/credentials.json" ]; then
    echo "Label Studio test database template already in $tpl"
    return 0
  fi
  rm -rf "$tpl" && mkdir -p "$tpl/data"
  local user="e2e@example.com" password token
  password="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(12))')"
  token="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(20))')"
  echo "creating the Label Studio test database template in $tpl"
  env LABEL_STUDIO_BASE_DATA_DIR="$tpl/data" DJANGO_DB=sqlite SECRET_KEY="ram-grounded-e2e" \
      LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true SENTRY_DSN= FRONTEND_SENTRY_DSN= \
      COLLECT_ANALYTICS=false LATEST_VERSION_CHECK=false HOME="$tpl" \
      "$VENV/bin/label-studio" init -q --username "$user" --password "$password" --user-token "$token" \
      --enable-legacy-api-token --internal-host 127.0.0.1 > "$tpl/init.log" 2>&1 \
    || { echo "label-studio init failed:"; tail -20 "$tpl/init.log"; return 1; }
  printf '{"username": "%s", "password": "%s", "token": "%s"}\n' "$user" "$password" "$token" > "$tpl/credentials.json"
}

if [ -x "$VENV/bin/label-studio" ] && [ "$(installed_version)" = "$VERSION" ]; then
  echo "label-studio $VERSION already in $VENV"
else
  echo "installing label-studio==$VERSION into $VENV (about 1 GB, 1-2 minutes)"
  "$PY" -m venv "$VENV"
  # the local index configuration warns about every missing mirror folder: keep the log readable
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "label-studio==$VERSION" 2>&1 \
    | grep -v "is ignored" || true
  test "$(installed_version)" = "$VERSION" || { echo "label-studio $VERSION did not install"; exit 1; }
  echo "label-studio $VERSION installed in $VENV"
fi
make_template
