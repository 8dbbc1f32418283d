# shellcheck shell=bash
# What heli's check scripts share (scripts/test.sh, scripts/fuzz.sh,
# scripts/mutants.sh): step headings, and cargo tools installed on demand.
# From the repository's root, source it:  . scripts/lib/checks.sh

# step <words...>: a heading on stderr.
step() { printf '\n==> %s\n' "$*" >&2; }

# cargo_tool <crate> <version> [<args>...]: puts <crate> <version> on PATH,
# from ${HELI_DEPS:-/opt/heli}/<crate>/bin; first installs it there from
# crates.io, unless `<crate> <args>... --version` there already says
# "<crate> <version>".
cargo_tool() {
    local crate=$1 version=$2
    shift 2
    local root=${HELI_DEPS:-/opt/heli}/$crate
    if [ "$("$root/bin/$crate" "$@" --version 2>/dev/null)" != "$crate $version" ]; then
        step "$crate $version (crates.io, into $root)"
        cargo install --locked --version "$version" --root "$root" "$crate"
    fi
    export PATH=$root/bin:$PATH
}
