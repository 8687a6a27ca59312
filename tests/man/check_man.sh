#!/usr/bin/env bash
# The man pages against the programs they describe: both pages render without a warning; every
# option that `shmbrokerd --help` and `shmctl --help` print has an entry in OPTIONS, and every
# command that `shmctl --help` lists has a subsection in COMMANDS with an entry for each option
# of `shmctl COMMAND --help`; the title lines carry the right section and version; installing
# puts the pages where man(1) looks for them.
#
# Usage: check_man.sh BUILD_DIR [SHMBROKERD_PAGE SHMCTL_PAGE]
# The pages default to BUILD_DIR/man/shmbrokerd.8 and BUILD_DIR/man/shmctl.1; passing others
# checks those instead (the install step is then skipped).
set -euo pipefail
build=$(cd "$1" && pwd)
daemon_page=${2:-$build/man/shmbrokerd.8}
shmctl_page=${3:-$build/man/shmctl.1}
failed=0
fail() {
  echo "check_man: $*" >&2
  failed=1
}

command -v groff >/dev/null ||
  { echo "check_man: groff is missing (Debian: groff-base; man-db for man)" >&2; exit 1; }
for page in "$daemon_page" "$shmctl_page"; do
  [ -f "$page" ] ||
    { echo "check_man: no page $page (is the shmbroker_man target built?)" >&2; exit 1; }
done

# Warnings: man(1)'s own pipeline when there is one, and groff with every warning on.
for page in "$daemon_page" "$shmctl_page"; do
  warnings=$(groff -man -Tutf8 -ww -z "$page" 2>&1) || fail "groff cannot render $page"
  if command -v man >/dev/null; then
    warnings+=$'\n'$(man --warnings -l -Tutf8 "$page" 2>&1 >/dev/null) ||
      fail "man cannot render $page"
  fi
  [ -z "${warnings//$'\n'/}" ] || fail "$page renders with warnings:"$'\n'"$warnings"
done

# The page as plain text: no hyphenation and very long lines, so that no option is split and
# every paragraph is one line.
render() { groff -man -Tutf8 -rHY=0 -rLL=1000n -P-cbou "$1" 2>/dev/null; }

# section TEXT NAME [SUBSECTION]: the lines of section NAME (.SH) of a rendered page, or only
# those of its subsection SUBSECTION (.SS, the first word of the heading).
section() {
  awk -v sh="$2" -v ss="${3:-}" '
    /^[^ ]/ { in_sh = ($0 == sh); in_ss = (ss == ""); next }
    in_sh && /^   [^ ]/ { in_ss = (ss == "" || $1 == ss) }
    in_sh && in_ss' <<<"$1"
}

# Every option a --help output names (--long ones and -x short ones), one per line.
options_of() {
  grep -oE -- '(^|[^[:alnum:]-])--?[[:alnum:]][[:alnum:]-]*' | sed -E 's/^[^-]+//' | sort -u
}

# check_entries WHAT TEXT HELP [SKIP]: every option in HELP, but those in SKIP, has an entry
# (.TP) of its own in TEXT: a tag such as "--socket PATH" or "-h, --help" or "--quiet, -q".
# Being named somewhere else in the page is not enough.
check_entries() {
  local what=$1 text=$2 options opt
  options=$(options_of <<<"$3")
  [ -n "$options" ] || fail "$what: no options found in its --help"
  for opt in $options; do
    grep -qxF -- "$opt" <<<"${4:-}" && continue
    grep -qE -- "^ {7}(-[^ ,]+( [^ ,]+)?, )*${opt}(,| |\$)" <<<"$text" ||
      fail "$what: $opt has no entry in the man page"
  done
}

daemon_text=$(render "$daemon_page")
shmctl_text=$(render "$shmctl_page")

check_entries "shmbrokerd --help (OPTIONS)" "$(section "$daemon_text" OPTIONS)" \
  "$("$build/bin/shmbrokerd" --help)"
shmctl_help=$("$build/bin/shmctl" --help)
check_entries "shmctl --help (OPTIONS)" "$(section "$shmctl_text" OPTIONS)" "$shmctl_help"
# The commands as `shmctl --help` lists them, each with a subsection in COMMANDS that has an
# entry for each of its options (-h/--help and the global ones are in OPTIONS).
commands=$(sed -n '/^Subcommands:/,/^$/p' <<<"$shmctl_help" | awk 'NR > 1 && NF { print $1 }')
[ -n "$commands" ] || fail "shmctl --help lists no commands"
for command in $commands; do
  grep -qE "^ {3}${command}( |\$)" <<<"$(section "$shmctl_text" COMMANDS)" ||
    fail "shmctl $command has no subsection in COMMANDS"
  check_entries "shmctl $command --help (COMMANDS, $command)" \
    "$(section "$shmctl_text" COMMANDS "$command")" "$("$build/bin/shmctl" "$command" --help)" \
    "$(options_of <<<"$shmctl_help")"
done

# Title lines: section 1 for shmctl (`man 1 shmctl`, not the system call shmctl(2)), section 8
# for the daemon, and the version the programs report.
version=$("$build/bin/shmctl" --version | awk '{ print $2 }')
grep -qx ".TH SHMCTL 1 \"\" \"shmbroker $version\" \"shmbroker manual\"" "$shmctl_page" ||
  fail "$shmctl_page: no title line .TH SHMCTL 1 for shmbroker $version"
grep -qx ".TH SHMBROKERD 8 \"\" \"shmbroker $version\" \"shmbroker manual\"" "$daemon_page" ||
  fail "$daemon_page: no title line .TH SHMBROKERD 8 for shmbroker $version"
head -n 1 <<<"$shmctl_text" | grep -q '^SHMCTL(1) ' || fail "shmctl page header is not SHMCTL(1)"
head -n 1 <<<"$daemon_text" | grep -q '^SHMBROKERD(8) ' ||
  fail "shmbrokerd page header is not SHMBROKERD(8)"

# Installing. Only the man component: a full install would rewrite BUILD_DIR/install_manifest.txt,
# which the install test reads, possibly at the same time.
if [ $# -gt 1 ]; then
  echo "check_man: pages given on the command line: install not checked"
elif ! grep -qx 'SHMBROKER_INSTALL:BOOL=ON' "$build/CMakeCache.txt"; then
  echo "check_man: SHMBROKER_INSTALL is off: install not checked"
else
  prefix=$(mktemp -d)
  trap 'rm -rf "$prefix"' EXIT
  # GNUInstallDirs leaves the cache entry empty for its default.
  mandir=$(sed -n 's/^CMAKE_INSTALL_MANDIR:PATH=//p' "$build/CMakeCache.txt")
  mandir=${mandir:-share/man}
  cmake --install "$build" --prefix "$prefix" --component man >/dev/null
  for installed in "$mandir/man8/shmbrokerd.8" "$mandir/man1/shmctl.1"; do
    cmp -s "$prefix/$installed" "$build/man/$(basename "$installed")" ||
      fail "not installed as $prefix/$installed"
  done
  if command -v man >/dev/null; then
    found=$(man -M "$prefix/$mandir" -w 1 shmctl 2>&1) || true
    [ "$found" = "$prefix/$mandir/man1/shmctl.1" ] || fail "man 1 shmctl finds '$found'"
  fi
fi

[ "$failed" -eq 0 ] || exit 1
echo "check_man: man pages match shmbrokerd and shmctl"
