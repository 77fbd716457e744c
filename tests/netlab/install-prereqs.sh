#!/usr/bin/env bash
# Install what the real-host test lab (tests/netlab) needs, when it is missing.
# Idempotent; runs as root on Debian (CI and developer machines). The distro's own
# sshd service is kept from ever starting: the lab starts one sshd per fake host,
# inside that host's network namespace, and a system sshd on 0.0.0.0:22 would only
# be an unwanted listener in the root namespace.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-prereqs: must run as root" >&2
    exit 1
fi

# command -> package that provides it
declare -A NEEDED=(
    [sshd]=openssh-server
    [ssh]=openssh-client
    [ssh-keygen]=openssh-client
    [ip]=iproute2
    [pkill]=procps
    [unshare]=util-linux
    [nsenter]=util-linux
    # login shells of lab hosts (tests/test_netlab_login_shells.py): what a remote command
    # string means must not depend on root's shell
    [zsh]=zsh
    [fish]=fish
)

have() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; }

missing=()
for cmd in "${!NEEDED[@]}"; do
    have "$cmd" || missing+=("${NEEDED[$cmd]}")
done

# Debian's ssh unit and init script both honour this file: never start the system sshd.
mkdir -p /etc/ssh
touch /etc/ssh/sshd_not_to_be_run

# Fake NixOS hosts (Lab(nixos=...)) bind-mount their own store on /nix inside their private
# mount namespace, which needs the directory to exist. An existing /nix is never touched.
[ -e /nix ] || mkdir -m 0755 /nix

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-prereqs: all present"
    exit 0
fi

mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "install-prereqs: installing ${pkgs[*]}"

# Keep maintainer scripts from starting services during the install (Debian policy-rc.d
# protocol: exit 101 = action forbidden). Only add one if the machine has none.
added_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
fi
cleanup() { if [ "$added_policy" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${pkgs[@]}"

# Belt and braces where an init system is present.
if [ -d /run/systemd/system ]; then
    systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
fi
echo "install-prereqs: done"
