#!/usr/bin/env bash
# Makes (or reuses) the environment of the anomalib peer rows and prints its python.
#
#   experiments/anomalib_env.sh [ENV_DIR]      (default: $HDHKD_ANOMALIB_ENV or ~/.cache/hdhkd-monai/anomalib-env)
#
# anomalib 2.7.0 brings lightning, jsonargparse, kornia, FrEIA and more that hdhkd-monai does not use; keeping them
# out of hdhkd-monai's environment keeps its dependency set what the package declares. The venv layers anomalib over
# the calling python's site-packages (its torch, timm, MONAI and hdhkd-monai, through a .pth file, after the venv's
# own packages), so torch is not installed twice and anomalib runs on the same torch and timm as the other rows. Run
# it with the python hdhkd-monai is installed in. It is reused while anomalib_requirements.txt and that python are
# unchanged.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
requirements="$here/anomalib_requirements.txt"
env_dir="${1:-${HDHKD_ANOMALIB_ENV:-$HOME/.cache/hdhkd-monai/anomalib-env}}"
base_sites="$(python -c 'import site; print("\n".join(site.getsitepackages()))')"
key="$(cat "$requirements" - <<<"$base_sites" | sha256sum | cut -d' ' -f1)"
source "$here/../tools/cached_env.sh"
reuse_cached_env "$env_dir" "$key" anomalib && exit 0
python -m venv "$env_dir"
env_site="$("$env_dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
while read -r dir; do echo "import site; site.addsitedir('$dir')"; done <<<"$base_sites" > "$env_site/hdhkd-base-site.pth"
"$env_dir/bin/python" -m pip install -q -r "$requirements" >&2
mark_cached_env "$env_dir" "$key"
