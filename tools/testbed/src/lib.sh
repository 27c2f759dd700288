# Shell functions for testbed jobs (busybox sh and bash). Jobs load them with
#   . "$LEGO_TESTBED_LIB"

# lego_vnode NAME TRIES READY_SECS LEGOVMM_RUN_ARGS...
# Runs `$LEGOVMM run LEGOVMM_RUN_ARGS...` with the guest console copied live to standard
# output and to NAME.console, and legovmm's own messages in NAME.err (printed after each
# try). A guest that neither prints LEGO_GUEST_READY nor ends within READY_SECS is killed
# and started again, up to TRIES tries in all (early hangs of multi-vCPU guests happen
# under QEMU's SVM emulation); on the nested testbed so is a guest that triple-faults (see
# below). Writes NAME.exit and NAME.tries, prints
# `LEGO_VNODE_DONE name=NAME exit=STATUS tries=N` and returns legovmm's status
# (125 if no try got its guest up).
lego_vnode() {
    _lv_name=$1
    _lv_tries=$2
    _lv_ready=$3
    shift 3
    _lv_try=0
    _lv_rc=125
    while [ "$_lv_try" -lt "$_lv_tries" ]; do
        _lv_try=$((_lv_try + 1))
        rm -f "$_lv_name.pid" "$_lv_name.rc"
        : > "$_lv_name.console"
        echo "LEGO_VNODE_START name=$_lv_name try=$_lv_try"
        {
            $LEGOVMM run "$@" 2> "$_lv_name.err" &
            echo $! > "$_lv_name.pid"
            wait $!
            echo $? > "$_lv_name.rc"
        } | tee "$_lv_name.console" &
        _lv_pipe=$!
        while [ ! -s "$_lv_name.pid" ]; do sleep 0.1; done
        _lv_pid=$(cat "$_lv_name.pid")
        _lv_waited=0
        while [ ! -e "$_lv_name.rc" ] && ! grep -q LEGO_GUEST_READY "$_lv_name.console" \
            && [ "$_lv_waited" -lt "$_lv_ready" ]; do
            sleep 1
            _lv_waited=$((_lv_waited + 1))
        done
        if [ ! -e "$_lv_name.rc" ] && ! grep -q LEGO_GUEST_READY "$_lv_name.console"; then
            kill "$_lv_pid" 2> /dev/null
            sleep 1
            kill -9 "$_lv_pid" 2> /dev/null
            # Children of a killed legovmm may still hold the pipe: stop tee as well.
            kill "$_lv_pipe" 2> /dev/null
            wait "$_lv_pipe" 2> /dev/null
            cat "$_lv_name.err"
            echo "LEGO_VNODE_HANG name=$_lv_name try=$_lv_try after=${_lv_waited}s"
            _lv_rc=125
            continue
        fi
        wait "$_lv_pipe"
        _lv_rc=$(cat "$_lv_name.rc" 2> /dev/null || echo 1)
        cat "$_lv_name.err"
        # On the nested testbed a guest that triple-faults is started again (its console kept
        # as NAME.tryN.console): under QEMU's emulated SVM on a busy machine an L2 guest
        # occasionally faults with no message of its own. On a real host (direct mode) it is
        # the guest's failure. LEGO_VNODE_CRASH_RETRY=0 turns this off.
        if [ "$_lv_rc" = 3 ] && [ "$_lv_try" -lt "$_lv_tries" ] \
            && [ "${LEGO_TESTBED_MODE:-}" = nested ] && [ "${LEGO_VNODE_CRASH_RETRY:-1}" = 1 ] \
            && grep -q "triple-faulted" "$_lv_name.err"; then
            cp "$_lv_name.console" "$_lv_name.try$_lv_try.console"
            echo "LEGO_VNODE_TRIPLE_FAULT name=$_lv_name try=$_lv_try"
            continue
        fi
        break
    done
    rm -f "$_lv_name.pid" "$_lv_name.rc"
    echo "$_lv_rc" > "$_lv_name.exit"
    echo "$_lv_try" > "$_lv_name.tries"
    echo "LEGO_VNODE_DONE name=$_lv_name exit=$_lv_rc tries=$_lv_try"
    return "$_lv_rc"
}
