# services.lab-orchestrator: the controller side (issue 4).
#
# Shape follows nixpkgs' system.autoUpgrade (tasks/auto-upgrade.nix) and the
# borgmatic module: an RFC 42 `settings` attrset rendered into the
# orchestrator's config file, a oneshot unit started by a timer, and the
# config validated at build time through `system.checks`.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    attrNames
    concatStringsSep
    filterAttrs
    escapeShellArg
    hasPrefix
    literalExpression
    literalMD
    mapAttrsToList
    mkDefault
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    mkPackageOption
    optional
    optionalAttrs
    partition
    types
    ;

  cfg = config.services.lab-orchestrator;

  # The orchestrator's config file is YAML; JSON is YAML, and pkgs.formats.json
  # needs nothing but jq at build time (formats.yaml needs remarshal).
  format = pkgs.formats.json { };

  stateDir = "/var/lib/lab-orchestrator";
  defaultUser = "lab-orchestrator";

  # Running as the module's own system user is the hardened mode. Any other
  # user (the seed's `user = "geir"`, or root) is taken to be a user whose
  # update/deploy commands may need `sudo` — e.g. `lab deploy-all` switching
  # the controller itself with `sudo nixos-rebuild switch` — and the sandbox
  # is relaxed for exactly that below.
  dedicatedUser = cfg.user == defaultUser;

  homeDirs = [
    "/home/"
    "/root/"
  ];
  flakeInHome = builtins.any (p: hasPrefix p "${cfg.flake}/") homeDirs;

  # "02:00" (the seed's form) -> "*-*-* 02:00:00"; anything else is passed to
  # systemd as an OnCalendar expression. An out-of-range "HH:MM" fails an
  # assertion; any other expression systemd would refuse ("Timer unit lacks
  # value setting. Refusing.") fails the build (validate-schedule below).
  hhmm = builtins.match "([0-9]{1,2}):([0-9]{2})" cfg.schedule;
  hhmmValid =
    hhmm == null
    || (
      lib.toIntBase10 (builtins.elemAt hhmm 0) <= 23 && lib.toIntBase10 (builtins.elemAt hhmm 1) <= 59
    );
  onCalendar = if hhmm != null then "*-*-* ${cfg.schedule}:00" else cfg.schedule;

  localMachines = attrNames (filterAttrs (_: m: m.local) cfg.machines);

  # The controller reboots itself through polkit (see security.polkit below).
  # With a hand-written configFile the module cannot see whether it has a
  # `local: true` machine, so it assumes one.
  rebootsItself = localMachines != [ ] || cfg.configFile != null;

  # configFile, as a string: a Nix path value is copied to the store here.
  userConfigFile = "${cfg.configFile}";
  userConfigFileInStore = cfg.configFile != null && hasPrefix "${builtins.storeDir}/" userConfigFile;

  # Each unit gets the SSH key through its own LoadCredential=, which systemd
  # places under /run/credentials/<unit name>/. The orchestrator takes the key
  # path from its config file and does not expand specifiers or variables, so
  # each unit gets its own config file that differs only in
  # ssh.identity_file. (A shared file would need the credential at a path
  # independent of the unit name, i.e. a bind mount or a copy out of the
  # credentials directory; one more small file is simpler and obviously
  # right.) The copy in /etc, for commands typed by hand, names the key file
  # itself: it works for whoever can read it.
  credentialPath = unit: name: "/run/credentials/${unit}.service/${name}";

  # Files with secrets, as LoadCredential= entries and as config keys
  # (`section.key`): the SSH key and its passphrase, and the notification and
  # heartbeat URLs, whose tokens would be readable by anyone in the store.
  credentials =
    optional (cfg.sshKeyFile != null) {
      name = "ssh-key";
      section = "ssh";
      key = "identity_file";
      file = cfg.sshKeyFile;
    }
    ++ optional (cfg.sshKeyPassphraseFile != null) {
      name = "ssh-key-passphrase";
      section = "ssh";
      key = "passphrase_file";
      file = cfg.sshKeyPassphraseFile;
    }
    ++ optional (cfg.notify.urlsFile != null) {
      name = "notify-urls";
      section = "notify";
      key = "urls_file";
      file = cfg.notify.urlsFile;
    }
    ++ optional (cfg.heartbeat.urlFile != null) {
      name = "heartbeat-url";
      section = "heartbeat";
      key = "url_file";
      file = cfg.heartbeat.urlFile;
    };

  # What each unit loads: the files above, then the `credentials` option's,
  # for the user's own commands.
  loadCredential =
    map (credential: "${credential.name}:${credential.file}") credentials
    ++ mapAttrsToList (name: file: "${name}:${file}") cfg.credentials;
  ownCredentialNames = [
    "ssh-key"
    "ssh-key-passphrase"
    "notify-urls"
    "heartbeat-url"
  ];

  # The options naming such files, for the assertions below.
  secretFileOptions = {
    inherit (cfg) sshKeyFile sshKeyPassphraseFile;
    "notify.urlsFile" = cfg.notify.urlsFile;
    "heartbeat.urlFile" = cfg.heartbeat.urlFile;
  };
  outsideStore = path: hasPrefix "/" path && !hasPrefix builtins.storeDir path;

  # node_exporter's textfile collector reads every *.prom file of one
  # directory; the orchestrator replaces its file there atomically (a new
  # file in the same directory, renamed over the old one), so it needs the
  # directory itself writable.
  nodeExporter = config.services.prometheus.exporters.node;
  metricsFile = "${cfg.metrics.directory}/lab_orchestrator.prom";

  dropNulls = filterAttrs (_: v: v != null);

  renderMachine =
    machine:
    dropNulls (
      removeAttrs machine [ "checks" ]
      // {
        checks = if machine.checks == [ ] then null else map dropNulls machine.checks;
      }
    );

  # builtins.toJSON sorts attribute names, so `machines` cannot carry the
  # reboot order the way a hand-written YAML mapping does; the explicit
  # top-level `order` key does.
  renderConfig =
    # unit: the unit whose credentials directory holds the files; null: the files themselves.
    unit:
    let
      credentialSettings = lib.foldl' (
        settings: credential:
        lib.recursiveUpdate settings {
          ${credential.section}.${credential.key} =
            if unit == null then credential.file else credentialPath unit credential.name;
        }
      ) { } credentials;
    in
    lib.recursiveUpdate cfg.settings credentialSettings
    // {
      machines = lib.mapAttrs (_: renderMachine) cfg.machines;
      order = cfg.rebootOrder;
    };

  configFiles =
    if cfg.configFile != null then
      {
        run = userConfigFile;
        resume = userConfigFile;
        cli = userConfigFile;
      }
    else
      {
        run = format.generate "lab-orchestrator-run.yaml" (renderConfig "lab-orchestrator");
        resume = format.generate "lab-orchestrator-resume.yaml" (
          renderConfig "lab-orchestrator-resume"
        );
        cli = format.generate "lab-orchestrator.yaml" (renderConfig null);
      };

  # Only a file in the store can be read by the build; one elsewhere (e.g.
  # with secrets) is read at run time only.
  validateConfig = cfg.configFile == null || userConfigFileInStore;

  orchestrator = lib.getExe' cfg.package "orchestrator";

  checkSubmodule = types.submodule {
    # Keys this module does not know are passed through, so a check option the
    # orchestrator adds later is reachable without a module change.
    freeformType = format.type;
    options = {
      type = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "tcp";
        description = "Check type (`http`, `tcp`, `command`, `systemd`); `null` means `http`. Each type's keys are in config/REFERENCE.md; those not declared here pass through as they are.";
      };
      url = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "http://grey-area.local:8080/health";
        description = "URL probed after the machine is back up (`type = \"http\"`, required there; see config/REFERENCE.md).";
      };
      status = mkOption {
        type = types.nullOr types.int;
        default = null;
        example = 200;
        description = "Expected HTTP status; `null` keeps the orchestrator's default (see config/REFERENCE.md).";
      };
      body_contains = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Text the response body must contain; `null`: no body check.";
      };
      timeout = mkOption {
        type = types.nullOr (types.either types.str types.int);
        default = null;
        example = "2s";
        description = "Bound on this probe (\"2s\", \"1m\" or seconds); `null` keeps the orchestrator's default (see config/REFERENCE.md).";
      };
      verify_tls = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = "Whether to verify the TLS certificate; `null` keeps the orchestrator's default (see config/REFERENCE.md).";
      };
    };
  };

  machineSubmodule = types.submodule (
    { name, ... }:
    {
      freeformType = format.type;
      options = {
        host = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "${name}.local";
          description = "Host name or address to reach `${name}` over SSH. Required unless `local` is set.";
        };
        user = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "lab-orchestrator";
          description = "SSH user; `null` uses `settings.ssh.user` (its default: see config/REFERENCE.md).";
        };
        port = mkOption {
          type = types.nullOr types.port;
          default = null;
          description = "SSH port; `null` uses `settings.ssh.port` (its default: see config/REFERENCE.md).";
        };
        local = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Whether this entry is the controller itself: it is rebooted
            locally (`settings.local.reboot_command`) instead of over SSH,
            after every other machine. At most one machine may be local.
          '';
        };
        power_cycle = mkOption {
          type = types.nullOr (types.listOf types.str);
          default = null;
          example = literalExpression ''
            [ "/bin/sh" "-c" "exec ipmitool -I lanplus -H ${name}-bmc.lan -U admin -f \"$CREDENTIALS_DIRECTORY/ipmi-password\" chassis power cycle" ]
          '';
          description = ''
            argv run on the controller to power-cycle `${name}` out of band (a
            smart plug, `ipmitool … chassis power cycle`, a Home Assistant
            script) when it has not answered SSH for
            `settings.reboot.power_cycle_after` after a reboot request; at
            most once per reboot (`machines.<name>.power_cycle` in
            config/REFERENCE.md). It runs as {option}`user`, in {option}`flake`,
            inside the units' sandbox: put its tools in {option}`path`, and
            pass a password or token with {option}`credentials` (read from
            `$CREDENTIALS_DIRECTORY`, as in the example), never in the argv,
            which ends up in the Nix store. `null`: never power-cycled.
          '';
        };
        checks = mkOption {
          type = types.listOf checkSubmodule;
          default = [ ];
          example = literalExpression ''
            [
              { url = "http://grey-area.local:8080/health"; }
              { type = "tcp"; port = 5432; }
              { type = "systemd"; units = [ "nginx.service" ]; }
            ]
          '';
          description = "Health checks (http, tcp, command, systemd) that must pass before the next machine is rebooted; their keys are `machines.<name>.checks[]` in config/REFERENCE.md.";
        };
      };
    }
  );
in
{
  options.services.lab-orchestrator = {
    enable = mkEnableOption "the nightly, health-gated lab update and rolling reboot (lab-orchestrator)";

    # mkPackageOption looks the default up by name in the attrset it is
    # given; nixpkgs has no lab-orchestrator, so it is given one that falls
    # back to package.nix built with the system's own nixpkgs (one Python
    # closure, and nothing of this repository's pinning leaks into the
    # user's system).
    package = mkPackageOption {
      lab-orchestrator = pkgs.lab-orchestrator or (pkgs.callPackage ./package.nix { });
    } "lab-orchestrator" {
      extraDescription = "Without this flake's `overlays.default`, pkgs has no lab-orchestrator and the default is this repository's nix/package.nix built with the system's nixpkgs.";
    };

    schedule = mkOption {
      type = types.str;
      default = "*-*-* 02:00:00";
      example = "02:00";
      description = ''
        When the nightly run starts: a systemd OnCalendar expression (see
        {manpage}`systemd.time(7)`), or `"HH:MM"` for a daily start at that
        time, as in the original module. Checked at build time with the
        system's `systemd-analyze calendar`.
      '';
    };

    randomizedDelay = mkOption {
      type = types.str;
      default = "0";
      example = "15min";
      description = "Random delay added to each start (RandomizedDelaySec=); `\"0\"` starts on time.";
    };

    persistent = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether a run missed while the controller was off starts at the next
        boot (Persistent= of the timer).
      '';
    };

    timeout = mkOption {
      type = types.str;
      default = "4h";
      example = "2h";
      description = ''
        Upper bound for one run, after which systemd stops it
        (TimeoutStartSec=; oneshot units have no start timeout by default).
        Must exceed update + deploy + one reboot timeout per machine.
      '';
    };

    user = mkOption {
      type = types.str;
      default = defaultUser;
      example = "geir";
      description = ''
        User the orchestrator and its update/deploy commands run as. The
        default is a dedicated system user created by this module, run with
        a strict sandbox; it reboots the controller through a polkit rule
        that allows it nothing else. Any other user (e.g. your login user,
        whose `lab deploy-all` runs `sudo nixos-rebuild switch`) gets a
        relaxed sandbox that lets `sudo` and the deploy work: no
        NoNewPrivileges=, no ProtectSystem=/ProtectHome=, no capability or
        namespace restrictions.
      '';
    };

    group = mkOption {
      type = types.str;
      default =
        let
          group = config.users.users.${cfg.user}.group or "";
        in
        if dedicatedUser then
          defaultUser
        else if group != "" then
          group
        else
          "users";
      defaultText = literalMD ''
        `"lab-orchestrator"` for the default {option}`user`; otherwise that
        user's primary group (`users.users.<user>.group`), else `"users"`.
      '';
      description = "Group the orchestrator runs as.";
    };

    flake = mkOption {
      type = types.str;
      default = "${stateDir}/lab";
      example = "/home/geir/Home-lab";
      description = ''
        Absolute path of the lab's flake checkout: the working directory of
        the update and deploy commands (the original module's labPath). It
        stays writable inside the sandbox (`flake.lock`). The default is a
        checkout inside the state directory, which belongs to {option}`user`;
        clone your lab there or point this at an existing checkout.
      '';
    };

    path = mkOption {
      type = types.listOf (types.either types.package types.str);
      default = [ ];
      example = literalExpression ''[ "/home/geir/Home-lab/result" pkgs.nixos-rebuild pkgs.ipmitool ]'';
      description = ''
        Packages (or directories containing `bin/`) added to PATH of the
        commands the orchestrator runs on the controller: update and deploy
        (`deploy.command`, or `deploy.machine_command` with
        `deploy.mode = "per-machine"`), the machines' `power_cycle`
        commands and hooks. E.g. the `lab` tool, nixos-rebuild, ipmitool or
        curl. nix, git, ssh and systemctl are always there.
      '';
    };

    sshKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/ssh/ssh_host_ed25519_key";
      description = ''
        Absolute path of the private key used to reach the machines. It is
        passed to the units with LoadCredential= (so it may be readable by
        root only) and never copied to the Nix store. `null` leaves the SSH
        client defaults (`~/.ssh/id_*` of {option}`user`).
      '';
    };

    sshKeyPassphraseFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/lab-orchestrator/ssh-key-passphrase";
      description = ''
        Absolute path of a file whose first line is the passphrase of
        {option}`sshKeyFile`. Like the key it is passed with LoadCredential=
        and never copied to the Nix store (`ssh.passphrase_file` in
        config/REFERENCE.md).
      '';
    };

    notify.urlsFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/lab-orchestrator/notify-urls";
      description = ''
        Absolute path of a file with the apprise URLs told how a run ended
        (one per line, `#` starts a comment; e.g. `ntfy://ntfy.sh/my-topic`,
        `tgram://<bot token>/<chat id>`), read at each run. The URLs carry
        tokens, so like {option}`sshKeyFile` the file is passed with
        LoadCredential= (it may be readable by root only) and never copied
        to the Nix store (`notify.urls_file` in config/REFERENCE.md). Which
        endings notify is `settings.notify.on`. URLs in
        `settings.notify.urls` instead end up in the world-readable Nix
        store (the module warns).
      '';
    };

    heartbeat.urlFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/lab-orchestrator/heartbeat-url";
      description = ''
        Absolute path of a file whose first line is a dead-man switch URL
        (a healthchecks.io ping URL or an Uptime Kuma push URL), pinged when
        a run starts and when it ends, so a run that never finishes (the
        controller died mid-run) raises an alert there. Secret like
        {option}`notify.urlsFile`: passed with LoadCredential= and never
        copied to the Nix store (`heartbeat.url_file` in
        config/REFERENCE.md); `settings.heartbeat.url` would put it into the
        store (the module warns).
      '';
    };

    credentials = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        ipmi-password = "/run/secrets/ipmi-password";
        home-assistant-token = "/run/secrets/home-assistant-token";
      };
      description = ''
        Further secret files for your own commands (a
        `machines.<name>.power_cycle` command, a hook): each name is
        passed to both units with LoadCredential=, so the file may be
        readable by root only and is never copied to the Nix store. A
        command finds it as `$CREDENTIALS_DIRECTORY/<name>` (the directory
        differs between the run unit and the resume unit, so use the
        variable, through `/bin/sh -c`, not a fixed path). Names are
        letters, digits, `.`, `_` and `-` (starting with a letter or digit),
        other than the ones this module uses itself (`ssh-key`, `ssh-key-passphrase`, `notify-urls`,
        `heartbeat-url`).
      '';
    };

    metrics.enable = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Whether the orchestrator writes Prometheus metrics of its runs to
        `lab_orchestrator.prom` in {option}`metrics.directory`, replaced
        atomically at run start, at each state change and at the end
        (`metrics.textfile` in config/REFERENCE.md). With
        {option}`services.prometheus.exporters.node.enable`, node_exporter's
        textfile collector is turned on and pointed at that directory, so
        the metrics appear on node_exporter's own endpoint; pass no
        `--collector.textfile.directory` of your own in its `extraFlags`
        then (set {option}`metrics.directory` to that directory instead).
        Without node_exporter on this host the file is still written, for
        whatever reads that directory (node_exporter in a container,
        Grafana Alloy, Telegraf). With {option}`configFile`, the directory
        and node_exporter are set up all the same; name the file as that
        file's `metrics.textfile`.
      '';
    };

    metrics.directory = mkOption {
      type = types.str;
      default = "/var/lib/prometheus-node-exporter-text-files";
      example = "/var/lib/node-exporter-textfiles";
      description = ''
        The textfile collector directory {option}`metrics.enable` writes to.
        The module creates it (mode 0755, owned by {option}`user`, so other
        writers must run as root) and keeps it writable in the units'
        sandbox; the metrics file itself is world-readable (0644). It is
        kept across reboots, so the last run's outcome stays visible.
      '';
    };

    machines = mkOption {
      type = types.attrsOf machineSubmodule;
      default = { };
      example = literalExpression ''
        {
          sleeper-service = { host = "sleeper-service.local"; };
          grey-area = {
            host = "grey-area.local";
            checks = [ { url = "http://grey-area.local:3000/"; } ];
          };
          self = { local = true; };
        }
      '';
      description = "Machines to reboot, one after another, each health-gated.";
    };

    rebootOrder = mkOption {
      type = types.listOf types.str;
      default =
        let
          split = partition (name: cfg.machines.${name}.local) (attrNames cfg.machines);
        in
        split.wrong ++ split.right;
      defaultText = literalMD "the names of {option}`machines` in alphabetical order, the local machine last";
      example = [
        "sleeper-service"
        "grey-area"
        "reverse-proxy"
        "self"
      ];
      description = ''
        Order in which machines are rebooted. Nix sorts attribute names, so
        set this when the order matters. Must name every machine exactly
        once, with the local machine (if any) last.
      '';
    };

    settings = mkOption {
      type = types.submodule {
        freeformType = format.type;
        options.state_dir = mkOption {
          type = types.str;
          default = stateDir;
          readOnly = true;
          description = "Where the run state lives; managed by systemd (StateDirectory=).";
        };
      };
      default = { };
      example = literalExpression ''
        {
          update.command = [ "lab" "update" ];
          deploy = {
            mode = "per-machine";
            machine_command = [ "lab" "deploy" "{machine}" ];
            timeout = "45m";
          };
          ssh.user = "lab-orchestrator";
          reboot = {
            timeout = "20m";
            when = "if-needed";
            boot_once = true;
            power_cycle_after = "5m";
          };
          on_failure = "rollback";
        }
      '';
      description = ''
        The orchestrator's configuration file, as Nix. Every key, with its
        default, is in `config/REFERENCE.md` of the orchestrator's
        repository (generated from its schema; see the README's
        Configuration section); a key left out keeps the orchestrator's
        default. The NixOS generation keys go here too: `deploy.mode` and
        `deploy.machine_command` (whose word `{machine}` becomes each
        machine's name), `reboot.when`, `reboot.if_changed`,
        `reboot.boot_once`, `reboot.power_cycle_after`, `on_failure` and
        `target_helper`; `reboot.boot_once` and `on_failure = "rollback"`
        run the helper that {option}`services.lab-orchestrator-target.enable`
        installs on each machine. `flake`, `machines` (with each machine's
        `power_cycle`) and the SSH key come from the options of the same
        purpose; by default `ssh.known_hosts` is
        `/etc/ssh/ssh_known_hosts`, generated from
        {option}`programs.ssh.knownHosts`, when running as the dedicated
        user. Everything here ends up in the world-readable Nix store: put
        no secrets here, e.g. notification or heartbeat URLs with tokens
        (`notify.urls`, `heartbeat.url`); use {option}`notify.urlsFile` and
        {option}`heartbeat.urlFile`.
      '';
    };

    configFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/etc/lab-orchestrator/lab.yaml";
      description = ''
        An orchestrator config file to use as it is, instead of the ones
        generated from {option}`settings`, {option}`machines` and
        {option}`rebootOrder` (which then go into no file). A file in the
        Nix store is checked with `orchestrator validate-config` at build
        time and linked to /etc/lab-orchestrator/config.yaml; one outside
        it (e.g. with secrets) is read at run time only, and `orchestrator`
        typed by hand needs `--config` for it. {option}`flake` still sets
        the path kept writable in the sandbox: keep it the file's `flake`.
        {option}`sshKeyFile` cannot be used with it: name the key as the
        file's `ssh.identity_file`, readable by {option}`user`. Since the
        file may have a `local: true` machine, {option}`user` is allowed to
        reboot this machine (see {option}`user`).
      '';
    };

    configFiles = mkOption {
      type = types.attrsOf types.path;
      internal = true;
      readOnly = true;
      description = "The generated config files: one per unit (`run`, `resume`) and `cli`, installed in /etc.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      services.lab-orchestrator = {
        inherit configFiles;
        settings = {
          inherit (cfg) flake;
          ssh = mkIf dedicatedUser { known_hosts = mkDefault [ "/etc/ssh/ssh_known_hosts" ]; };
          metrics = mkIf cfg.metrics.enable { textfile = metricsFile; };
        };
      };

      assertions = [
        {
          assertion = builtins.length localMachines <= 1;
          message = "services.lab-orchestrator.machines: at most one machine may set `local = true`; found ${concatStringsSep ", " localMachines}.";
        }
        {
          # attrNames is sorted, so this also rejects duplicates.
          assertion = builtins.sort builtins.lessThan cfg.rebootOrder == attrNames cfg.machines;
          message = "services.lab-orchestrator.rebootOrder must name every machine in services.lab-orchestrator.machines exactly once; it is [ ${toString cfg.rebootOrder} ], the machines are [ ${toString (attrNames cfg.machines)} ].";
        }
        {
          assertion =
            localMachines == [ ]
            || (cfg.rebootOrder != [ ] && lib.last cfg.rebootOrder == builtins.head localMachines);
          message = "services.lab-orchestrator.rebootOrder: the local machine (${toString localMachines}) must come last, since rebooting it ends the run.";
        }
        {
          assertion = hhmmValid;
          message = "services.lab-orchestrator.schedule = \"${cfg.schedule}\" is not a time of day: in the \"HH:MM\" form the hour must be 00-23 and the minute 00-59.";
        }
        {
          assertion = cfg.configFile == null || cfg.sshKeyFile == null;
          message = "services.lab-orchestrator.sshKeyFile cannot be used with services.lab-orchestrator.configFile: name the key as ssh.identity_file in that file.";
        }
        {
          assertion = hasPrefix "/" cfg.flake && !hasPrefix builtins.storeDir cfg.flake;
          message = "services.lab-orchestrator.flake must be an absolute path to a writable checkout (not a store path), got \"${cfg.flake}\".";
        }
        {
          assertion = cfg.sshKeyPassphraseFile == null || cfg.sshKeyFile != null;
          message = "services.lab-orchestrator.sshKeyPassphraseFile needs services.lab-orchestrator.sshKeyFile: it is that key's passphrase.";
        }
        {
          assertion = !cfg.metrics.enable || outsideStore cfg.metrics.directory;
          message = "services.lab-orchestrator.metrics.directory must be an absolute path outside the Nix store, got \"${cfg.metrics.directory}\".";
        }
        {
          assertion = !(cfg.settings ? machines || cfg.settings ? order);
          message = "services.lab-orchestrator.settings: set machines and their order with services.lab-orchestrator.machines and services.lab-orchestrator.rebootOrder, not settings.machines/settings.order.";
        }
      ]
      # Secrets are read by the units through LoadCredential=, never from the store.
      ++ mapAttrsToList (option: file: {
        assertion = file == null || outsideStore file;
        message = "services.lab-orchestrator.${option} must be an absolute path outside the Nix store, got \"${toString file}\".";
      }) secretFileOptions
      # A hand-written configFile serves both units, so it cannot name each
      # unit's own credentials directory.
      ++ mapAttrsToList (option: file: {
        assertion = cfg.configFile == null || file == null;
        message = "services.lab-orchestrator.${option} cannot be used with services.lab-orchestrator.configFile: name the file in that file instead.";
      }) (removeAttrs secretFileOptions [ "sshKeyFile" ])
      ++ mapAttrsToList (name: file: {
        assertion =
          builtins.match "[A-Za-z0-9][A-Za-z0-9_.-]*" name != null
          && !builtins.elem name ownCredentialNames
          && outsideStore file;
        message = "services.lab-orchestrator.credentials.${name}: the name must be letters, digits, `.`, `_` or `-`, starting with a letter or digit, and none of ${concatStringsSep ", " ownCredentialNames}, and the file an absolute path outside the Nix store; got \"${file}\".";
      }) cfg.credentials
      ++ mapAttrsToList (name: m: {
        assertion = m.local || m.host != null;
        message = "services.lab-orchestrator.machines.${name}.host must be set (or local = true).";
      }) cfg.machines;

      warnings =
        optional (dedicatedUser && config.programs.ssh.knownHosts == { }) ''
          services.lab-orchestrator runs as a dedicated user, which has no ~/.ssh/known_hosts:
          declare the machines' host keys in programs.ssh.knownHosts (or set
          services.lab-orchestrator.settings.ssh.known_hosts), or every SSH connection will be refused.
        ''
        ++ optional ((cfg.settings.notify.urls or [ ]) != [ ]) ''
          services.lab-orchestrator.settings.notify.urls puts the notification URLs, and the tokens
          in them, into the world-readable Nix store: list them in a file named by
          services.lab-orchestrator.notify.urlsFile instead.
        ''
        ++ optional ((cfg.settings.heartbeat.url or null) != null) ''
          services.lab-orchestrator.settings.heartbeat.url puts the heartbeat URL, a secret, into the
          world-readable Nix store: put it in a file named by
          services.lab-orchestrator.heartbeat.urlFile instead.
        '';

      environment.systemPackages = [ cfg.package ];
      # The CLI's default --config, so `orchestrator status` works by hand.
      environment.etc."lab-orchestrator/config.yaml" = mkIf validateConfig { source = configFiles.cli; };

      users.users = mkIf dedicatedUser {
        ${defaultUser} = {
          isSystemUser = true;
          inherit (cfg) group;
          home = stateDir;
          description = "lab-orchestrator service user";
        };
      };
      users.groups = mkIf (cfg.group == defaultUser) { ${defaultUser} = { }; };

      # Rebooting the controller (the `local` machine) is `systemctl reboot`
      # as the service user, which logind authorizes through polkit. Unlike
      # sudo this needs no privilege gain in the process, so it works under
      # NoNewPrivileges=. Only reboot actions are allowed; not
      # reboot-ignore-inhibit, so a held shutdown inhibitor makes the reboot
      # fail (and the run report it) rather than be overridden. polkit is off
      # by default in NixOS (nixpkgs#156858), so it is turned on here, as
      # nixpkgs modules do for a service they need.
      security.polkit.enable = mkIf rebootsItself true;
      security.polkit.extraConfig = mkIf rebootsItself ''
        // lab-orchestrator: let the service user reboot this machine, nothing else.
        polkit.addRule(function (action, subject) {
          if (subject.user == ${builtins.toJSON cfg.user} &&
              (action.id == "org.freedesktop.login1.reboot" ||
               action.id == "org.freedesktop.login1.reboot-multiple-sessions")) {
            return polkit.Result.YES;
          }
        });
      '';

      # A bad setting fails nixos-rebuild, not the 02:00 run.
      system.checks = [
        # Parsed by this system's own systemd, which would otherwise refuse
        # the timer at activation. (A schedule naming a time zone is checked
        # against the zoneinfo systemd finds in the build sandbox.)
        (pkgs.runCommand "lab-orchestrator-validate-schedule" { } ''
          if ! ${config.systemd.package}/bin/systemd-analyze calendar ${escapeShellArg onCalendar} > /dev/null; then
            echo ${
              escapeShellArg "error: services.lab-orchestrator.schedule = \"${cfg.schedule}\" is not a systemd calendar expression (OnCalendar=, see systemd.time(7))."
            } >&2
            exit 1
          fi
          touch $out
        '')
      ]
      ++ optional validateConfig (
        pkgs.runCommand "lab-orchestrator-validate-config" { } ''
          ${orchestrator} --config ${configFiles.run} validate-config
          ${orchestrator} --config ${configFiles.resume} validate-config
          ${orchestrator} --config ${configFiles.cli} validate-config
          touch $out
        ''
      );
    }

    (mkIf cfg.metrics.enable {
      # 0755: node_exporter (its own user) lists the directory and reads the
      # file, which the orchestrator makes 0644 despite the units' UMask.
      # In /var/lib, not /run: the controller reboots itself mid-run, and the
      # last run's outcome should survive that.
      systemd.tmpfiles.rules = [
        "d ${cfg.metrics.directory} 0755 ${cfg.user} ${cfg.group} -"
      ];

      # The textfile collector is on by default in node_exporter; naming it
      # keeps it on under `--collector.disable-defaults`. nixpkgs has no
      # option for its directory, hence the flag. The condition on
      # node_exporter's `enable` stays inside its options:
      # services.prometheus.exporters is one submodule option, and a
      # condition around a definition of it that reads it recurses.
      services.prometheus.exporters.node = {
        enabledCollectors = mkIf nodeExporter.enable [ "textfile" ];
        extraFlags = mkIf nodeExporter.enable [
          "--collector.textfile.directory=${cfg.metrics.directory}"
        ];
      };
    })

    (
      let
        unitPath = [
          config.nix.package
          pkgs.git
          config.programs.ssh.package
        ]
        # sudo is a setuid wrapper in /run/wrappers/bin.
        ++ optional (!dedicatedUser) "/run/wrappers"
        ++ cfg.path;

        serviceConfig = {
          User = cfg.user;
          Group = cfg.group;
          StateDirectory = "lab-orchestrator";
          StateDirectoryMode = "0750";
          SyslogIdentifier = "lab-orchestrator";
          # Run state and anything else the orchestrator writes are for the
          # service user only.
          UMask = "0077";
          PrivateTmp = true;
          # The orchestrator reports where the run is with sd_notify STATUS=
          # lines, shown by `systemctl status`.
          NotifyAccess = "main";
        }
        // optionalAttrs (loadCredential != [ ]) {
          LoadCredential = loadCredential;
        }
        // (
          if dedicatedUser then
            {
              NoNewPrivileges = true;
              ProtectSystem = "strict";
              # flake.lock is written by the update command. "-": a missing
              # checkout is reported by the orchestrator, not as an opaque
              # namespace setup failure.
              # The metrics directory is made by tmpfiles; if it is missing
              # the run goes on and reports the failed write.
              ReadWritePaths = [
                "-${cfg.flake}"
              ]
              ++ optional cfg.metrics.enable "-${cfg.metrics.directory}";
              # A checkout under /home or /root stays reachable, read-only
              # apart from the flake itself.
              ProtectHome = if flakeInHome then "read-only" else true;
              PrivateDevices = true;
              ProtectKernelTunables = true;
              ProtectKernelModules = true;
              ProtectKernelLogs = true;
              ProtectControlGroups = true;
              ProtectClock = true;
              ProtectHostname = true;
              # /proc/sys/kernel/random/boot_id is read to detect the local
              # reboot, so ProcSubset=pid is not set.
              ProtectProc = "invisible";
              RestrictNamespaces = true;
              RestrictRealtime = true;
              RestrictSUIDSGID = true;
              LockPersonality = true;
              SystemCallArchitectures = "native";
              # AF_NETLINK: getaddrinfo(AI_ADDRCONFIG) in ssh and nix.
              RestrictAddressFamilies = [
                "AF_UNIX"
                "AF_INET"
                "AF_INET6"
                "AF_NETLINK"
              ];
              CapabilityBoundingSet = "";
              AmbientCapabilities = "";
              # Not set: SystemCallFilter= and MemoryDenyWriteExecute=. The
              # update/deploy commands are the user's own tooling (nix, git,
              # the lab tool, possibly a JIT); a filter hit there shows up as
              # an obscure EPERM at 02:00.
            }
          else
            {
              # Relaxed on purpose for a user whose deploy uses sudo (see the
              # `user` option): sudo needs privilege gain (so no
              # NoNewPrivileges=), and the root `nixos-rebuild switch` it
              # starts inherits this unit's mount namespace and bounding set,
              # so /nix/var, /boot, /etc and /root must stay writable (no
              # ProtectSystem=/ProtectHome=) and capabilities unrestricted.
              NoNewPrivileges = false;
            }
        );
        # What the run unit and the resume unit share.
        orchestratorUnit = {
          after = [ "network-online.target" ];
          wants = [ "network-online.target" ];
          path = unitPath;
          # A deploy that switches the controller itself must not restart or
          # stop the run that is doing the deploy (nor start a second one).
          restartIfChanged = false;
          unitConfig.X-StopOnRemoval = false;
        };
      in
      {
        systemd.services.lab-orchestrator = orchestratorUnit // {
          description = "Lab-wide update and health-gated rolling reboot";
          serviceConfig = serviceConfig // {
            Type = "oneshot";
            ExecStart = "${orchestrator} --config ${configFiles.run} run";
            # Oneshot units have no start timeout by default.
            TimeoutStartSec = cfg.timeout;
          };
        };

        systemd.timers.lab-orchestrator = {
          description = "Nightly lab update and rolling reboot";
          wantedBy = [ "timers.target" ];
          timerConfig = {
            OnCalendar = onCalendar;
            Persistent = cfg.persistent;
            RandomizedDelaySec = cfg.randomizedDelay;
          };
        };

        # Finishes a run after the controller rebooted itself (or after a
        # crash/power cut mid-run); a no-op when nothing was interrupted.
        systemd.services.lab-orchestrator-resume = orchestratorUnit // {
          description = "Resume an interrupted lab-orchestrator run after boot";
          wantedBy = [ "multi-user.target" ];
          serviceConfig = serviceConfig // {
            # Not oneshot: verifying the controller waits for
            # `systemctl is-system-running` to say "running", which it never
            # does while a oneshot unit of the boot transaction is still
            # activating. With Type=exec the start job ends at exec.
            Type = "exec";
            ExecStart = "${orchestrator} --config ${configFiles.resume} resume";
            # Stay "active (exited)": switch-to-configuration starts the
            # active targets, which would otherwise start this unit again in
            # the middle of every deploy of the controller. (Hence also no
            # RuntimeMaxSec=, which would time out that state; every wait
            # inside the orchestrator has its own deadline.)
            RemainAfterExit = true;
            # 75: another orchestrator process holds the lock, i.e. the run
            # unit is already continuing the run; nothing to do here.
            SuccessExitStatus = [ 75 ];
          };
        };
      }
    )
  ]);
}
