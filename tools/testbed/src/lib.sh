# Shell functions for testbed jobs (busybox sh and bash). Jobs load them with
#   . "$LEGO_TESTBED_LIB"

# lego_pid_with WORD...: prints the pid of the first process whose command line holds every
# WORD (from /proc; no pidof needed); returns 1 when there is none.
lego_pid_with() {
    for _pw_d in /proc/[0-9]*; do
        _pw_all=yes
        for _pw_w in "$@"; do
            grep -qa -- "$_pw_w" "$_pw_d/cmdline" 2> /dev/null || { _pw_all=no; break; }
        done
        if [ "$_pw_all" = yes ]; then
            echo "${_pw_d#/proc/}"
            return 0
        fi
    done
    return 1
}

# lego_vnode NAME TRIES READY_SECS LEGOVMM_RUN_ARGS...
# Runs `$LEGOVMM run LEGOVMM_RUN_ARGS...` with the guest console copied live to standard
# output and to NAME.console, and legovmm's own messages in NAME.err (printed after each
# try). A guest that neither prints LEGO_GUEST_READY nor ends within READY_SECS is killed
# and started again, up to TRIES tries in all (early hangs of multi-vCPU guests happen
# under QEMU's SVM emulation); on the nested testbed so is a guest that triple-faults (see
# below). Writes NAME.exit and NAME.tries, prints
# `LEGO_VNODE_DONE name=NAME exit=STATUS tries=N` and returns legovmm's status
# (125 if no try got its guest up).
# While the guest runs, a watchdog (lego_vnode_watch) stops one that makes no progress.
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
        lego_vnode_watch "$_lv_name" "$_lv_pid" "$_lv_try"
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

# lego_children PID: the PIDs whose parent is PID (legovmm's backends).
lego_children() {
    if [ -e "/proc/$1/task/$1/children" ]; then
        cat /proc/"$1"/task/*/children 2> /dev/null
        return
    fi
    for _lc in /proc/[0-9]*; do
        [ "$(cut -d' ' -f4 "$_lc/stat" 2> /dev/null)" = "$1" ] && echo "${_lc#/proc/}"
    done
}

# lego_progress_mark PID CONSOLE: a line that changes whenever the vNode makes progress:
# its console grew, or legovmm or one of its backends read or wrote anything (guest
# kicks, interrupts, requests to monitors all pass through read/write calls).
lego_progress_mark() {
    _pm_files=""
    for _pp in $1 $(lego_children "$1"); do _pm_files="$_pm_files /proc/$_pp/io"; done
    # shellcheck disable=SC2086 # one word per file
    echo "$(wc -c < "$2" 2> /dev/null) $(cat $_pm_files 2> /dev/null | grep char | tr '\n' ' ')"
}

# lego_dump_state PID: what a stalled vNode's processes are doing: each thread's state,
# wait channel and kernel stack, the I/O counters, the compute host's interrupts, and the
# nested guest's last exits from KVM's trace events.
lego_dump_state() {
    echo "--- legovmm $1 and its backends: threads (state, wait channel, kernel stack) ---"
    for _dp in $1 $(lego_children "$1"); do
        echo "process $_dp: $(tr '\0' ' ' < "/proc/$_dp/cmdline" 2> /dev/null | cut -c1-160)"
        echo "  io: $(tr '\n' ' ' < "/proc/$_dp/io" 2> /dev/null)"
        for _dt in /proc/"$_dp"/task/*; do
            echo "  thread ${_dt##*/} $(cat "$_dt/comm" 2> /dev/null): state $(cut -d' ' -f3 "$_dt/stat" 2> /dev/null), wchan $(cat "$_dt/wchan" 2> /dev/null), utime+stime $(cut -d' ' -f14,15 "$_dt/stat" 2> /dev/null)"
            sed 's/^/      /' "$_dt/stack" 2> /dev/null
        done
    done
    echo "--- sockets ---"
    netstat -tn 2> /dev/null | tail -n +3
    echo "--- compute host interrupts ---"
    cat /proc/interrupts 2> /dev/null
    _tr=/sys/kernel/tracing
    [ -d $_tr/events ] || mount -t tracefs nodev $_tr 2> /dev/null
    if [ -d $_tr/events/kvm ]; then
        echo "--- the nested guest's exits over 2 s (KVM trace events) ---"
        echo > $_tr/trace
        for _ev in kvm_exit kvm_inj_virq kvm_msi_set_irq kvm_set_irq kvm_userspace_exit; do
            echo 1 > "$_tr/events/kvm/$_ev/enable" 2> /dev/null
        done
        sleep 2
        echo 0 > $_tr/events/kvm/enable 2> /dev/null
        echo "$(grep -vc '^#' $_tr/trace) events; the last 80:"
        grep -v '^#' $_tr/trace | tail -n 80
    fi
}

# lego_vnode_watch NAME PID TRY: waits while legovmm PID runs (until NAME.rc appears).
# Calls `lego_progress` every LEGO_PROGRESS_SECS (default 10) when the job defines it (for
# live figures). If nothing moves for LEGO_VNODE_STALL_SECS (default 180; 0 = never), prints
# LEGO_VNODE_STALL, writes NAME.stall (see lego_dump_state) to the console, and stops
# legovmm, so a hang is found in minutes with its state, not at the job's timeout.
lego_vnode_watch() {
    _vw_stall=${LEGO_VNODE_STALL_SECS:-180}
    _vw_every=${LEGO_PROGRESS_SECS:-10}
    _vw_last=""
    _vw_quiet=0
    _vw_tick=0
    while [ ! -e "$1.rc" ]; do
        sleep 2
        _vw_tick=$((_vw_tick + 2))
        _vw_mark=$(lego_progress_mark "$2" "$1.console")
        if [ "$_vw_mark" = "$_vw_last" ]; then
            _vw_quiet=$((_vw_quiet + 2))
        else
            _vw_quiet=0
            _vw_last=$_vw_mark
        fi
        if [ $((_vw_tick % _vw_every)) -lt 2 ] && command -v lego_progress > /dev/null 2>&1; then
            lego_progress
        fi
        if [ "$_vw_stall" -gt 0 ] && [ "$_vw_quiet" -ge "$_vw_stall" ] && [ ! -e "$1.rc" ]; then
            echo "LEGO_VNODE_STALL name=$1 try=$3 after=${_vw_quiet}s"
            lego_dump_state "$2" > "$1.stall" 2>&1
            cat "$1.stall"
            kill "$2" 2> /dev/null
            sleep 2
            kill -9 "$2" $(lego_children "$2") 2> /dev/null
            return 1
        fi
    done
}
