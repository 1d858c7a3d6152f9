# Shared by the setup scripts (sourced, not run): Debian packages and source packages.
# The caller defines log() and die().

missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

# apt_install PACKAGE...: installs what is missing, refreshing package lists older than a day.
apt_install() {
    local -a missing
    mapfile -t missing < <(missing_packages "$@")
    ((${#missing[@]})) || return 0
    local newest
    newest=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit)
    if [[ -z $newest ]]; then
        log "apt-get update (package lists are missing or older than a day)"
        apt-get update -qq
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Debian mirror this machine already uses: the first non-security URI of its apt sources.
debian_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        uri=$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f" |
            grep -v -- '-security' | head -n1 || true)
        [[ -n $uri ]] && { echo "${uri%/}"; return 0; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        uri=$(awk '$1 == "deb" || $1 == "deb-src" {
                for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' "$f" |
            grep -v -- '-security' | head -n1 || true)
        [[ -n $uri ]] && { echo "${uri%/}"; return 0; }
    done
    return 1
}

# fetch_debian_source PACKAGE VERSION SUITE DEST: downloads the orig tarball of a source
# package of another suite through a private apt configuration (the machine's own sources
# stay untouched). Only the orig tarball is needed, and the mirror may lack the .dsc.
fetch_debian_source() {
    local package=$1 version=$2 suite=$3 dest=$4 mirror apt_dir
    mirror=$(debian_mirror) ||
        die "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"
    log "mirror from the machine's apt sources: $mirror"
    apt_dir=$(mktemp -d)
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
        >"$apt_dir/sources.list"
    cat >"$apt_dir/apt.conf" <<APT
Dir::Etc::SourceList "$apt_dir/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::State::Lists "$apt_dir/lists";
Dir::Cache "$apt_dir/cache";
// The private directory is not readable by the _apt user; download as root.
APT::Sandbox::User "root";
APT
    log "apt-get update for $suite source packages (private configuration)"
    APT_CONFIG=$apt_dir/apt.conf apt-get update -qq
    log "downloading $package=$version source ($suite)"
    # apt-get source reports the missing .dsc as an error even when the tarball arrived.
    (cd "$dest" && APT_CONFIG=$apt_dir/apt.conf apt-get source --download-only -qq \
        "$package=$version" >/dev/null 2>&1) || true
    rm -rf "$apt_dir"
    compgen -G "$dest/${package}_${version%-*}.orig.tar.*" >/dev/null ||
        die "${package}_${version%-*}.orig.tar.* was not downloaded from $mirror ($suite)"
}
