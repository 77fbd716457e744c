#!/bin/sh
# lab-orchestrator-target: the only thing the orchestrator runs as root on a NixOS target to
# change what boots (installed by nix/target.nix; sudo allows exactly this program).
#
#   target-helper.sh rollback SYSTEM      SYSTEM (known good) is the boot default again
#   target-helper.sh boot-once SYSTEM     next boot only: SYSTEM; then the booted system's
#   target-helper.sh make-default SYSTEM  SYSTEM's generation is the default (the gate passed)
#
# Success: key=value lines on stdout (generation=, bootloader=, changed= for rollback); the
# tools' own output goes to stderr. Exit 2: refused (bad arguments, nothing changed);
# 1: failed; 3: this boot loader cannot boot a generation once (the orchestrator then warns
# and reboots normally). Every failure is one line on stderr starting "target-helper: ".
#
# The one argument comes from the controller, which is not trusted with root: it must be a
# NixOS system already in the system profile's history, and it is only ever passed as one
# quoted word to tools, never evaluated. The paths are the real ones, never from the
# environment (the netlab bind-mounts its fake NixOS onto them). Tools come from PATH, which
# nix/target.nix sets to exactly its packages (sudo would pass the SSH user's on).
set -eu

PROFILE=/nix/var/nix/profiles/system
BOOTED=/run/booted-system
ENTRIES=/boot/loader/entries
LOADER_CONF=/boot/loader/loader.conf
GRUB_CFG=/boot/grub/grub.cfg
GRUBENV=/boot/grub/grubenv

say() { printf 'target-helper: %s\n' "$1" >&2; }
refuse() { say "$1"; exit 2; }
fail() { say "$1"; exit 1; }
unsupported() { say "$1"; exit 3; }

# run WHAT CMD...: the tool's output is captured so that a failure is one line (its last,
# printable ASCII only: it is shown to whoever watches the controller); on success it is
# passed on to stderr, keeping stdout for our key=value lines.
run() {
    what=$1
    shift
    if out=$("$@" 2>&1); then
        if [ -n "$out" ]; then printf '%s\n' "$out" >&2; fi
    else
        rc=$?
        last=$(printf '%s\n' "$out" | tail -n 1 | LC_ALL=C tr -cd ' -~')
        fail "$what failed (exit $rc)${last:+: $last}"
    fi
}

# generation_of PATH: the highest N whose system-N-link resolves to PATH, or nothing.
# readlink -e, not -f: -f prints a path whose last component is missing and succeeds.
generation_of() {
    best=
    for link in "$PROFILE"-*-link; do
        n=${link#"$PROFILE"-}
        n=${n%-link}
        case $n in '' | *[!0123456789]*) continue ;; esac
        [ "$(readlink -e -- "$link" || true)" = "$1" ] || continue
        if [ -z "$best" ] || [ "$n" -gt "$best" ]; then best=$n; fi
    done
    printf '%s' "$best"
}

# --- systemd-boot: an entry per generation, EFI variables for the default and the one-shot ---

# sdboot_entry N SYSTEM: true if nixos-generation-N.conf exists and boots SYSTEM (its
# `options` line has init=SYSTEM/init, as systemd-boot-builder writes it), and bootctl runs.
sdboot_entry() {
    command -v bootctl >/dev/null 2>&1 || return 1
    [ -f "$ENTRIES/nixos-generation-$1.conf" ] || return 1
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in
            "options init=$2/init" | "options init=$2/init "* | "options "*" init=$2/init" | \
                "options "*" init=$2/init "*) return 0 ;;
        esac
    done <"$ENTRIES/nixos-generation-$1.conf"
    return 1
}

# loader.conf's `default` (what switch-to-configuration boot wrote), or nothing.
loader_conf_default() {
    [ -f "$LOADER_CONF" ] || return 0
    while read -r key value || [ -n "$key" ]; do
        if [ "$key" = default ]; then
            printf '%s' "$value"
            return 0
        fi
    done <"$LOADER_CONF"
}

# --- GRUB: grub.cfg as NixOS's install-grub.pl writes it -------------------------------------
# Its header boots ${next_entry} once (what grub-reboot sets; `boot_once` keeps the entries'
# `savedefault` from saving it) and otherwise "${saved_entry}" (what grub-set-default sets)
# only with boot.loader.grub.default = "saved"; with a number it boots that entry and
# grub-set-default changes nothing. The entries: first the system of the last
# switch-to-configuration (title "NixOS", or "NixOS - Default" with specialisations), then the
# submenu "NixOS - All configurations" with "NixOS - Configuration N (DATE - VERSION)" per
# generation ("NixOS" is system.nixos.distroName). A generation with specialisations is a
# submenu whose title starts with ">", which a GRUB menu path cannot name: not supported.

grub_present() {
    [ -f "$GRUB_CFG" ] && command -v grub-reboot >/dev/null 2>&1 &&
        command -v grub-set-default >/dev/null 2>&1
}

# grub_saved: grub.cfg boots ${next_entry} once and ${saved_entry} by default.
grub_saved() {
    next='' saved=''
    while IFS= read -r line || [ -n "$line" ]; do
        # shellcheck disable=SC2016 # GRUB's variables, literally
        case $line in
            *'set default="${next_entry}"') next=1 ;;
            *'set default="${saved_entry}"') saved=1 ;;
        esac
    done <"$GRUB_CFG"
    [ -n "$next" ] && [ -n "$saved" ]
}

# grub_entry top|N SYSTEM: the menu path naming the entry that boots SYSTEM (its `linux` line
# has init=SYSTEM/init): the first top-level one, or generation N's in the submenu.
grub_entry() {
    depth=0 entry='' title='' path='' all='' all_title=''
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in
            'submenu "'*)
                if [ "$depth" = 0 ]; then
                    case $line in *' - All configurations" '*) all=1 ;; *) all= ;; esac
                    all_title=${line#'submenu "'}
                    all_title=${all_title%%'" '*}
                fi
                depth=$((depth + 1))
                ;;
            'menuentry "'*)
                entry=1
                title=${line#'menuentry "'}
                title=${title%%'" '*}
                path=
                if [ "$1" = top ] && [ "$depth" = 0 ]; then
                    path=$title
                elif [ "$depth" = 1 ] && [ -n "$all" ]; then
                    case $all_title$title in
                        *'>'*) ;;
                        *" - Configuration $1 ("*) path="$all_title>$title" ;;
                    esac
                fi
                ;;
            '}')
                if [ -n "$entry" ]; then
                    entry='' path=''
                elif [ "$depth" -gt 0 ]; then
                    depth=$((depth - 1))
                fi
                ;;
            *" init=$2/init "* | *" init=$2/init")
                if [ -n "$entry" ] && [ -n "$path" ]; then
                    # ">" separates the parts of a menu path; titles of ours never hold one.
                    case $title in *'>'*) return 1 ;; esac
                    printf '%s' "$path"
                    return 0
                fi
                ;;
        esac
    done <"$GRUB_CFG"
    return 1
}

# --- the argument --------------------------------------------------------------------------

usage() { refuse "usage: target-helper.sh rollback|boot-once|make-default SYSTEM"; }

[ "$#" -eq 2 ] || usage
case $1 in rollback | boot-once | make-default) ;; *) usage ;; esac
action=$1
system=$2

# /nix/store/<32 characters of Nix's base32>-nixos-system-<name>: no other path, no "/" and
# no ".." component can get past it, and neither can a newline or anything a shell would
# expand (the value is never shown before it passed).
b='[0123456789abcdfghijklmnpqrsvwxyz]'
hash=$b$b$b$b$b$b$b$b
hash=$hash$hash$hash$hash
# shellcheck disable=SC2254 # $hash is a pattern
case $system in
    /nix/store/$hash-nixos-system-?*) ;;
    *) refuse "SYSTEM must be /nix/store/<hash>-nixos-system-<name>" ;;
esac
name=${system#/nix/store/????????????????????????????????-nixos-system-}
case $name in
    *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+._?=-]*)
        refuse "SYSTEM must be /nix/store/<hash>-nixos-system-<name>"
        ;;
esac
[ -e "$system" ] || refuse "$system does not exist"
generation=$(generation_of "$system")
# Only a system that once was this machine's: the controller cannot make it boot anything
# else, even a store path it got onto the machine some other way.
[ -n "$generation" ] || refuse "$system is in no generation of $PROFILE"

# --- the actions ---------------------------------------------------------------------------

case $action in
rollback)
    # After a SIGKILLed orchestrator retried, the profile already is SYSTEM: no second
    # rollback generation.
    if [ "$(readlink -e -- "$PROFILE" || true)" = "$system" ]; then
        changed=no
    else
        run "nix-env --set" nix-env -p "$PROFILE" --set "$system"
        changed=yes
    fi
    current=$(readlink -- "$PROFILE" || true)
    current=${current#system-}
    current=${current%-link}
    case $current in '' | *[!0123456789]*) fail "$PROFILE is no system-N-link" ;; esac
    # Writes the boot menu with this generation as its default (loader.conf / grub.cfg).
    run "switch-to-configuration boot" "$system/bin/switch-to-configuration" boot
    if sdboot_entry "$current" "$system"; then
        bootloader=systemd-boot
        # A boot-once before may have left EFI variables, which win over loader.conf.
        run "bootctl set-oneshot" bootctl set-oneshot ""
        run "bootctl set-default" bootctl set-default ""
    elif grub_present; then
        bootloader=grub
        if grub_saved; then
            entry=$(grub_entry top "$system") ||
                fail "rolled back, but $GRUB_CFG has no entry booting $system"
            if [ -f "$GRUBENV" ]; then
                run "grub-editenv unset next_entry" grub-editenv "$GRUBENV" unset next_entry
            fi
            run "grub-set-default" grub-set-default "$entry"
        fi
    else
        bootloader=none
    fi
    printf 'generation=%s\nbootloader=%s\nchanged=%s\n' "$current" "$bootloader" "$changed"
    ;;

boot-once)
    good=$(readlink -e -- "$BOOTED" || true)
    [ -n "$good" ] || fail "$BOOTED does not exist"
    good_generation=$(generation_of "$good")
    [ -n "$good_generation" ] || fail "the booted system is in no profile generation"
    if sdboot_entry "$generation" "$system" && sdboot_entry "$good_generation" "$good"; then
        # Default first: should the one-shot be set and this not, a hang would come back on
        # loader.conf's default, which is the new generation after a deploy.
        run "bootctl set-default" bootctl set-default "nixos-generation-$good_generation.conf"
        run "bootctl set-oneshot" bootctl set-oneshot "nixos-generation-$generation.conf"
        bootloader=systemd-boot
    elif grub_present; then
        grub_saved || unsupported "GRUB boots a generation once only with boot.loader.grub.default = \"saved\""
        good_entry=$(grub_entry "$good_generation" "$good") ||
            unsupported "GRUB: no menu entry of generation $good_generation that grub-set-default can name"
        new_entry=$(grub_entry "$generation" "$system") ||
            unsupported "GRUB: no menu entry of generation $generation that grub-reboot can name"
        run "grub-set-default" grub-set-default "$good_entry"
        run "grub-reboot" grub-reboot "$new_entry"
        bootloader=grub
    else
        unsupported "no systemd-boot entries for generations $good_generation and $generation, and no GRUB: cannot boot once"
    fi
    printf 'generation=%s\ndefault_generation=%s\nbootloader=%s\n' \
        "$generation" "$good_generation" "$bootloader"
    ;;

make-default)
    if sdboot_entry "$generation" "$system"; then
        # An EFI default would pin this generation past later deploys: leave the choice to
        # loader.conf, which switch-to-configuration boot keeps, unless it names another.
        run "bootctl set-oneshot" bootctl set-oneshot ""
        run "bootctl set-default" bootctl set-default ""
        if [ "$(loader_conf_default)" != "nixos-generation-$generation.conf" ]; then
            run "bootctl set-default" bootctl set-default "nixos-generation-$generation.conf"
        fi
        bootloader=systemd-boot
    elif grub_present; then
        grub_saved || unsupported "GRUB keeps a default only with boot.loader.grub.default = \"saved\""
        # The top entry when it is SYSTEM: its title stays "NixOS" after later deploys.
        entry=$(grub_entry top "$system") || entry=$(grub_entry "$generation" "$system") ||
            fail "$GRUB_CFG has no entry booting $system"
        run "grub-set-default" grub-set-default "$entry"
        bootloader=grub
    else
        unsupported "no systemd-boot entry for generation $generation, and no GRUB"
    fi
    printf 'generation=%s\nbootloader=%s\n' "$generation" "$bootloader"
    ;;
esac
