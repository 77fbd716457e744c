# services.lab-orchestrator-target: for each machine the controller reboots.
#
# A dedicated login user holding the controller's public key, allowed by sudo
# to run exactly what the orchestrator runs as root on a target, so the
# controller never needs root SSH. Over SSH the orchestrator runs:
#   cat /proc/sys/kernel/random/boot_id   (needs nothing)
#   systemctl is-system-running           (needs nothing; allowed anyway, see below)
#   sudo -n systemctl reboot              (the SSH user is not root)
#   sudo -n lab-orchestrator-target rollback|boot-once|make-default SYSTEM
#                                         (./target-helper.sh: which generation
#                                         boots; it validates its one argument)
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    concatMap
    hasPrefix
    makeBinPath
    mkDefault
    mkEnableOption
    mkIf
    mkOption
    optional
    removePrefix
    types
    ;

  cfg = config.services.lab-orchestrator-target;

  # sudo matches the command found through PATH against each rule, by path or
  # by being the same file. Listing the store path of this system's systemctl
  # and the /run/current-system path a login shell finds keeps the rule
  # working whichever the SSH session's PATH yields.
  systemctlPaths = [
    "${config.systemd.package}/bin/systemctl"
    "/run/current-system/sw/bin/systemctl"
  ];

  # Runs as root: it makes the system profile's generations, runs
  # switch-to-configuration and sets the boot loader's default and one-shot
  # entry. bootctl comes with systemd; grub-reboot, grub-set-default and
  # grub-editenv only where GRUB is the boot loader.
  helperTools = [
    pkgs.coreutils
    config.nix.package
    config.systemd.package
  ]
  ++ optional config.boot.loader.grub.enable pkgs.grub2;

  helper = pkgs.writeShellApplication {
    name = "lab-orchestrator-target";
    # Exactly these tools: sudo passes the SSH user's PATH on, and the helper
    # looks its tools up there (runtimeInputs would only come first in it).
    # The script is POSIX sh, which bash runs the same; its own #! line would
    # be a comment here, which shellcheck rejects.
    text = ''
      PATH=${makeBinPath helperTools}
      export PATH
    ''
    + removePrefix "#!/bin/sh\n" (builtins.readFile ./target-helper.sh);
  };

  helperPaths = [
    "${helper}/bin/lab-orchestrator-target"
    "/run/current-system/sw/bin/lab-orchestrator-target"
  ];

  allowedCommands =
    concatMap (systemctl: [
      "${systemctl} reboot"
      # Not run through sudo today; allowed so a config whose state command is
      # prefixed with sudo keeps working, and it changes nothing.
      "${systemctl} is-system-running"
    ]) systemctlPaths
    # Without arguments: any arguments. The helper takes nothing but one of
    # its three actions and one NixOS system from the profile's own history,
    # so this allows no more than choosing which of this machine's
    # generations boots.
    ++ helperPaths;

  # `restrict` turns off port, agent and X11 forwarding and the PTY for the
  # controller's key: it only runs commands. Options the key already has
  # (`from="..." ssh-ed25519 ...`) are kept after it, comma-separated.
  keyTypes = [
    "ssh-"
    "ecdsa-"
    "sk-"
  ];
  restrictKey =
    key: if builtins.any (type: hasPrefix type key) keyTypes then "restrict ${key}" else "restrict,${key}";
in
{
  options.services.lab-orchestrator-target = {
    enable = mkEnableOption "access for the lab-orchestrator controller to reboot this machine";

    user = mkOption {
      type = types.str;
      default = "lab-orchestrator";
      description = ''
        Login user the controller connects as. Set the controller's
        `services.lab-orchestrator.settings.ssh.user` (or the machine's
        `user`) to the same name.
      '';
    };

    authorizedKeys = mkOption {
      type = types.listOf types.singleLineStr;
      default = [ ];
      example = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... lab-orchestrator@controller" ];
      description = ''
        Public key(s) of the controller's
        {option}`services.lab-orchestrator.sshKeyFile`. Each is installed
        with the `restrict` option (no forwarding, no PTY); options given
        before the key type are kept.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.authorizedKeys != [ ];
        message = "services.lab-orchestrator-target.authorizedKeys must contain the controller's public key.";
      }
      {
        assertion = config.services.openssh.enable;
        message = "services.lab-orchestrator-target needs services.openssh.enable = true: the controller reaches this machine over SSH.";
      }
      {
        assertion = config.security.sudo.enable;
        message = "services.lab-orchestrator-target needs security.sudo.enable = true: the controller reboots this machine with `sudo -n systemctl reboot`.";
      }
      {
        assertion = cfg.user != "root";
        message = "services.lab-orchestrator-target.user must not be root; the point of this module is that the controller never logs in as root.";
      }
    ];

    # A system user (no home, no password) that can still log in over SSH
    # with a key: commands run through its shell. mkDefault: on a controller
    # that is also a target, both modules default to the user
    # lab-orchestrator, and the controller's definitions (its description,
    # group and home) win instead of conflicting.
    users.users.${cfg.user} = {
      isSystemUser = mkDefault true;
      group = mkDefault cfg.user;
      useDefaultShell = mkDefault true;
      description = mkDefault "lab-orchestrator controller access";
      openssh.authorizedKeys.keys = map restrictKey cfg.authorizedKeys;
    };
    users.groups.${cfg.user} = { };

    environment.systemPackages = [ helper ];

    # install-grub.pl's grub.cfg boots a grub-set-default entry only with
    # default = "saved"; otherwise the helper cannot boot a generation once
    # (exit 3) and the orchestrator reboots straight into a new one.
    warnings =
      optional (config.boot.loader.grub.enable && config.boot.loader.grub.default != "saved")
        "services.lab-orchestrator-target: with GRUB, set boot.loader.grub.default = \"saved\" so that the orchestrator can boot a new generation once and fall back to the running one if it hangs; without it, it reboots straight into the new generation.";

    security.sudo.extraRules = [
      {
        users = [ cfg.user ];
        # As root only (the nixpkgs default is ALL:ALL).
        runAs = "root";
        commands = map (command: {
          inherit command;
          options = [ "NOPASSWD" ];
        }) allowedCommands;
      }
    ];
  };
}
