#!/usr/bin/env bash
# Makes (or reuses) the MONAI Label environment and prints its python.
#
#   monailabel_app/make_env.sh [ENV_DIR]      (default: $HDHKD_MONAILABEL_ENV or ~/.cache/hdhkd-monai/monailabel-env)
#
# monailabel needs numpy<2 (its dependency pydicom-seg pins numpy<2 and jsonschema<4), while hdhkd-monai runs on
# numpy 2, so it cannot share hdhkd-monai's environment. This venv layers monailabel and those pins over the calling
# python's site-packages (its torch, MONAI and hdhkd-monai dependencies, added through a .pth file, after the venv's
# own packages), so the ~5 GB torch is not installed twice. Run it with the python hdhkd-monai is installed in. The
# environment is reused while requirements.txt and that python are unchanged.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_dir="${1:-${HDHKD_MONAILABEL_ENV:-$HOME/.cache/hdhkd-monai/monailabel-env}}"
# the calling python's site-packages folders (a venv's own and, with --system-site-packages, its base's)
base_sites="$(python -c 'import site; print("\n".join(site.getsitepackages()))')"
key="$(cat "$here/requirements.txt" - <<<"$base_sites" | sha256sum | cut -d' ' -f1)"
if [[ -f "$env_dir/.hdhkd-key" && "$(cat "$env_dir/.hdhkd-key")" == "$key" ]] \
    && "$env_dir/bin/python" -c "import monailabel" 2>/dev/null; then
    echo "$env_dir/bin/python"
    exit 0
fi
if [[ -e "$env_dir" && ! -f "$env_dir/.hdhkd-key" ]]; then
    echo "$env_dir exists and is not an environment this script made; give another ENV_DIR" >&2
    exit 1
fi
rm -rf "$env_dir"
python -m venv "$env_dir"
env_site="$("$env_dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
while read -r dir; do echo "import site; site.addsitedir('$dir')"; done <<<"$base_sites" > "$env_site/hdhkd-base-site.pth"
"$env_dir/bin/python" -m pip install -q -r "$here/requirements.txt" >&2
echo "$key" > "$env_dir/.hdhkd-key"
echo "$env_dir/bin/python"
