# Sourced by the scripts that make a cached side environment (monailabel_app/make_env.sh,
# experiments/anomalib_env.sh): one rule for reusing, refusing or clearing the folder.
#
#   reuse_cached_env ENV_DIR KEY MODULE
#
# Prints ENV_DIR's python and returns 0 when ENV_DIR was made for KEY (a hash of what the environment is made from)
# and imports MODULE; stops the script when ENV_DIR exists but this project did not make it (nothing of the user's
# is deleted); otherwise clears ENV_DIR and returns 1, for the caller to build it and then run `mark_cached_env`.
reuse_cached_env() {
    local env_dir="$1" key="$2" module="$3"
    if [[ -f "$env_dir/.hdhkd-key" && "$(cat "$env_dir/.hdhkd-key")" == "$key" ]] \
        && "$env_dir/bin/python" -c "import $module" 2>/dev/null; then
        echo "$env_dir/bin/python"
        return 0
    fi
    if [[ -e "$env_dir" && ! -f "$env_dir/.hdhkd-key" ]]; then
        echo "$env_dir exists and is not an environment this script made; give another ENV_DIR" >&2
        exit 1
    fi
    rm -rf "$env_dir"
    return 1
}

# mark_cached_env ENV_DIR KEY: records the key of a finished build and prints the environment's python.
mark_cached_env() {
    echo "$2" > "$1/.hdhkd-key"
    echo "$1/bin/python"
}
