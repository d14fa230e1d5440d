# Corral's shell kernel: one long-lived bash per context, so that the working directory,
# variables, functions and aliases persist from call to call. Started by the sandbox's
# supervisor with `bash --norc --noprofile THIS_FILE` (docs/protocol.md, "Kernels"):
#   fd 3  requests: the code of each call, terminated by a NUL byte (code cannot hold one)
#   fd 4  events: u32 big-endian length, u8 type (1 event, 2 end), payload
# The code runs in this shell itself (eval), with stdin at /dev/null and fds 3 and 4
# closed, so that it can neither swallow the next request nor forge an event. A call's
# deadline kills the processes it started; a busy builtin loop outlives that and the
# supervisor then ends the context (its state is lost).

__corral_end() {
  # END with the exit status as its payload. printf's \x escapes write the binary header
  # without a subshell, so a call costs no fork.
  local __s=$1 __h
  printf -v __h '\\x%02x' "${#__s}"
  printf "\\x00\\x00\\x00${__h}\\x02%s" "$__s" >&4
}

printf '\x00\x00\x00\x10\x01{"type":"ready"}' >&4
while IFS= read -r -d '' -u 3 __corral_code; do
  eval "$__corral_code" </dev/null 3<&- 4>&-
  __corral_end "$?"
done
