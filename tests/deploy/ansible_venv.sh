#!/usr/bin/env bash
# Create (once) the controller-side venv with ansible-core and ansible-lint, kept apart from the project venv.
# Usage: tests/deploy/ansible_venv.sh [VENV_DIR]   (default $ANSIBLE_VENV or /opt/converter-ansible/venv)
# Prints the venv path on its last line.
set -euo pipefail
VENV=${1:-${ANSIBLE_VENV:-/opt/converter-ansible/venv}}
ANSIBLE_CORE_SPEC=${ANSIBLE_CORE_SPEC:-ansible-core>=2.16,<2.19}
ANSIBLE_LINT_SPEC=${ANSIBLE_LINT_SPEC:-ansible-lint>=24.7}
STAMP="$VENV/.converter-ansible-installed"
if [[ ! -f "$STAMP" ]]; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q "$ANSIBLE_CORE_SPEC" "$ANSIBLE_LINT_SPEC" >&2
  # Modules the roles use beyond ansible.builtin (ansible.posix is not needed; community.general is not needed).
  touch "$STAMP"
fi
echo "$VENV"
