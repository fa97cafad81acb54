# shellcheck shell=bash
# Throwaway Python venv with the official UID2 SDK, for the interop test and the Python bench.
#
#   source scripts/lib/python-venv.sh      # from scripts/test.sh (works under set -euo pipefail)
#   "$UID2_PYTHON" scripts/interop/sdk_make_tokens.py target/interop/sdk-cases.json
#
# * Venv at ${UID2_VENV:-<repo>/target/py-venv}; created if missing (python3 -m venv, or a --without-pip
#   venv driven by the outer pip when ensurepip is unavailable, e.g. Debian without python3-venv).
# * Installs the pinned versions below from PyPI, quietly, only when the venv's stamp does not match
#   them (a rerun costs one file comparison). Set UID2_VENV_FORCE=1 to reinstall.
# * Exports UID2_PYTHON=<venv>/bin/python (absolute path).
# * On failure prints why to stderr and returns 1 (no exit: the caller decides).

# Pins: what `pip install uid2-client==2.9.0` resolved on 2026-11-29 (Python 3.11.7, pip 23.2.1),
# plus confluent-kafka (its wheel bundles librdkafka; no dependencies) for scripts/bench-e2e.sh.
UID2_VENV_REQUIREMENTS='uid2-client==2.9.0
pycryptodome==4.4.0
bitarray==3.12.3
typing_extensions==4.16.0
confluent-kafka==2.16.1'

uid2_python_venv_setup() {
    local here repo venv bootstrap stamp log
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" || return 1
    repo="$(cd "$here/../.." && pwd)" || return 1
    venv="${UID2_VENV:-$repo/target/py-venv}"
    case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac
    bootstrap="${UID2_BOOTSTRAP_PYTHON:-python3}"
    stamp="$venv/.uid2-requirements"
    log="$venv/.uid2-pip.log"

    if ! command -v "$bootstrap" >/dev/null 2>&1; then
        echo "python-venv: '$bootstrap' not found (need python3 >= 3.8 with pip)" >&2
        return 1
    fi

    if [[ ! -x "$venv/bin/python" ]]; then
        mkdir -p "$(dirname "$venv")" || return 1
        if ! "$bootstrap" -m venv "$venv" >/dev/null 2>&1; then
            # No ensurepip (Debian/Ubuntu without python3-venv): bare venv, install with the outer pip.
            rm -rf "$venv"
            if ! "$bootstrap" -m venv --without-pip "$venv" >/dev/null 2>&1; then
                echo "python-venv: '$bootstrap -m venv' failed; install the venv module (e.g. apt-get install python3-venv)" >&2
                return 1
            fi
        fi
    fi

    if [[ "${UID2_VENV_FORCE:-0}" != 1 && -f "$stamp" ]] \
        && [[ "$(cat "$stamp")" == "$UID2_VENV_REQUIREMENTS" ]]; then
        export UID2_PYTHON="$venv/bin/python"
        return 0
    fi

    local -a pip
    if "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        pip=("$venv/bin/python" -m pip)
    else
        pip=("$bootstrap" -m pip --python "$venv/bin/python")   # pip >= 22.3
    fi
    rm -f "$stamp"
    # shellcheck disable=SC2086  # one requirement per line, no spaces inside
    if ! PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1 \
        "${pip[@]}" install --quiet $UID2_VENV_REQUIREMENTS >"$log" 2>&1; then
        echo "python-venv: pip install into $venv failed (log: $log):" >&2
        tail -n 20 "$log" >&2
        return 1
    fi
    if ! "$venv/bin/python" -c 'import uid2_client, Crypto.Cipher.AES, bitarray' >>"$log" 2>&1; then
        echo "python-venv: uid2_client does not import after install (log: $log)" >&2
        return 1
    fi
    printf '%s' "$UID2_VENV_REQUIREMENTS" >"$stamp"
    export UID2_PYTHON="$venv/bin/python"
}

uid2_python_venv_setup
