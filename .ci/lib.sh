# Shared by the provision scripts (sourced, not run).

# apt_install PKG...: install Debian packages as root; refresh the package lists only when older than a day.
apt_install() {
  if [ "$(id -u)" != 0 ]; then echo "provision: need root to install $*" >&2; exit 1; fi
  [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ] || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
