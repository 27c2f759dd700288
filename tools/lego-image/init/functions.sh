# Functions of the LegoVMM guest /init (busybox sh). Kept apart from the main part so the
# host tests can source them and check the command line parsing.

# lego_run_cmd CMDLINE: prints the value of lego.run= from a kernel command line.
# Accepts lego.run="quoted value with spaces" or lego.run=word. Returns 1 if absent.
lego_run_cmd() {
    _s=" $1"
    case "$_s" in
        *' lego.run="'*)
            _rest=${_s#* lego.run=\"}
            printf '%s\n' "${_rest%%\"*}"
            ;;
        *' lego.run='*)
            _rest=${_s#* lego.run=}
            _rest=${_rest%%[ 	]*}
            printf '%s\n' "$_rest"
            ;;
        *)
            return 1
            ;;
    esac
}

# lego_run CMDLINE: runs lego.run with sh -c and prints LEGO_RUN_EXIT=<status>.
# Returns 1 without running anything if the command line has no lego.run.
lego_run() {
    _cmd=$(lego_run_cmd "$1") || return 1
    sh -c "$_cmd"
    echo "LEGO_RUN_EXIT=$?"
}

# lego_load_modules LIST: insmod each module path listed (one a line), quietly; a module
# that is already present (built in or loaded) is not an error.
lego_load_modules() {
    [ -f "$1" ] || return 0
    while read -r _m; do
        [ -n "$_m" ] || continue
        if ! _out=$(insmod "$_m" 2>&1); then
            case "$_out" in
                *'File exists'*) ;;
                *) echo "lego-init: could not load $_m: $_out" ;;
            esac
        fi
    done < "$1"
}
