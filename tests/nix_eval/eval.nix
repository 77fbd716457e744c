# Evaluates this repository's flake outputs and NixOS modules with the real
# nixpkgs `lib` (lib.evalModules) but without nixpkgs or NixOS: every NixOS
# option the modules set or read is declared below with nixpkgs' type and
# default (each names the nixpkgs file it mirrors), and `pkgs` is a stand-in
# whose derivations are plain attrsets carrying their inputs (`text`,
# `buildCommand`) so tests can inspect and run them.
#
# `controller` / `target` / `both` are JSON of one host's config, evaluated
# with nixosModules.default / .target / both: `services`, plus optional
# top-level "users", "_security" and "_boot" keys that go to `users`,
# `security` and `boot`.
# `controllerFile` (a path) is a NixOS module used as the controller host's
# config instead of `controller`.
{
  nixpkgsLib,
  repo,
  # Stands in for the built package: "${packageOut}/bin/orchestrator" must run.
  packageOut,
  controller ? "null",
  target ? "null",
  both ? "null",
  controllerFile ? "",
}:

let
  lib = import nixpkgsLib;
  inherit (lib) mkOption types;

  fakeDrv =
    name: attrs:
    {
      type = "derivation";
      inherit name;
      outPath = "${builtins.storeDir}/00000000000000000000000000000000-${name}";
    }
    // attrs;

  # As pkgs.formats.json's type in nixpkgs (pkgs/pkgs-lib/formats.nix).
  jsonValue =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        (types.attrsOf jsonValue)
        (types.listOf jsonValue)
      ]
    )
    // {
      description = "JSON value";
    };

  pythonPackageNames = [
    "transitions"
    "asyncssh"
    "bcrypt"
    "httpx"
    "tenacity"
    "pydantic"
    "pyyaml"
    "click"
    "rich"
    "filelock"
    "pytimeparse"
    "apprise"
    "prometheus-client"
    "sdnotify"
    "logging-journald"
    "setuptools"
    "pytestCheckHook"
    "pytest-asyncio"
  ];

  pkgs = {
    inherit lib;
    stdenv.hostPlatform.system = "x86_64-linux";
    lab-orchestrator = {
      type = "derivation";
      name = "lab-orchestrator";
      outPath = packageOut;
      meta.mainProgram = "orchestrator";
    };
    coreutils = fakeDrv "coreutils" { };
    git = fakeDrv "git" { };
    grub2 = fakeDrv "grub" { };
    # The README's controller configuration puts these on `path`.
    ipmitool = fakeDrv "ipmitool" { };
    nixos-rebuild = fakeDrv "nixos-rebuild" { };
    nix = fakeDrv "nix" { };
    openssh = fakeDrv "openssh" { };
    systemd = fakeDrv "systemd" { };
    writeText = name: text: fakeDrv name { inherit text; };
    # nixpkgs' build also runs shellcheck on the script; tests run that here.
    writeShellApplication =
      { name, text, ... }@attrs:
      fakeDrv name {
        passedAttrs = attrs;
        meta.mainProgram = name;
      };
    runCommand = name: env: buildCommand: fakeDrv name { inherit env buildCommand; };
    formats.json =
      { }:
      {
        type = jsonValue;
        # The real one pretty-prints with jq; same JSON value.
        generate = name: value: fakeDrv name { text = builtins.toJSON value; };
      };
    python3Packages = lib.genAttrs pythonPackageNames (name: fakeDrv name { pname = name; }) // {
      # What package.nix passes, minus `src` (lib.fileset needs Nix >= 2.14
      # and a store; Debian's nix-bin is 2.8 and we evaluate with a dummy
      # store).
      buildPythonApplication =
        attrs: fakeDrv attrs.pname { passedAttrs = removeAttrs attrs [ "src" ]; };
    };
    callPackage = path: args: import path ({ inherit (pkgs) lib python3Packages; } // args);
  };

  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (system: pkgs);
  };

  flake = (import (repo + "/flake.nix")).outputs {
    self = flake;
    inherit nixpkgs;
  };

  opt = type: default: mkOption { inherit type default; };
  # Unit settings (serviceConfig=, ...): nixpkgs checks each value's type;
  # loose here.
  unitSettings = opt (types.attrsOf types.anything) { };

  # nixos/lib/systemd-unit-options.nix (commonUnitOptions, serviceOptions,
  # timerOptions): only the options the modules set, with their defaults.
  commonUnitOptions = {
    description = opt types.str "";
    wantedBy = opt (types.listOf types.str) [ ];
    after = opt (types.listOf types.str) [ ];
    wants = opt (types.listOf types.str) [ ];
    unitConfig = unitSettings;
  };
  serviceUnit = types.submodule {
    options = commonUnitOptions // {
      path = opt (types.listOf (types.oneOf [ types.package types.str ])) [ ];
      restartIfChanged = opt types.bool true;
      serviceConfig = unitSettings;
    };
  };
  timerUnit = types.submodule {
    options = commonUnitOptions // {
      timerConfig = unitSettings;
    };
  };

  # nixos/modules/config/users-groups.nix (userOpts), plus
  # users.users.<name>.openssh from nixos/modules/services/networking/ssh/sshd.nix.
  userSubmodule = types.submodule {
    options = {
      description = opt (types.passwdEntry types.str) "";
      group = opt types.str "";
      isSystemUser = opt types.bool false;
      isNormalUser = opt types.bool false;
      home = opt (types.passwdEntry types.path) "/var/empty";
      useDefaultShell = opt types.bool false;
      openssh.authorizedKeys.keys = opt (types.listOf types.singleLineStr) [ ];
    };
  };
  # nixos/modules/config/users-groups.nix (groupOpts).
  groupSubmodule = types.submodule {
    options = {
      gid = opt (types.nullOr types.int) null;
      members = opt (types.listOf types.str) [ ];
    };
  };

  # nixos/modules/security/sudo.nix (extraRules).
  sudoRule = types.submodule {
    options = {
      users = opt (types.listOf (types.either types.int types.str)) [ ];
      groups = opt (types.listOf (types.either types.int types.str)) [ ];
      host = opt types.str "ALL";
      runAs = opt types.str "ALL:ALL";
      commands = opt (types.listOf (
        types.either types.str (
          types.submodule {
            options = {
              command = mkOption { type = types.str; };
              options = opt (types.listOf (
                types.enum [
                  "NOPASSWD"
                  "PASSWD"
                  "NOEXEC"
                  "EXEC"
                  "SETENV"
                  "NOSETENV"
                  "LOG_INPUT"
                  "NOLOG_INPUT"
                  "LOG_OUTPUT"
                  "NOLOG_OUTPUT"
                  "MAIL"
                  "NOMAIL"
                  "FOLLOW"
                  "NOFOLLOW"
                  "INTERCEPT"
                  "NOINTERCEPT"
                ]
              )) [ ];
            };
          }
        )
      )) [ ];
    };
  };

  # nixos/modules/system/etc/etc.nix (environment.etc.<name>; `source` is
  # derived from `text` there).
  etcEntry = types.submodule {
    options = {
      source = mkOption { type = types.path; };
      text = opt (types.nullOr types.lines) null;
    };
  };

  nixosStubs = {
    options = {
      # nixos/modules/misc/assertions.nix
      assertions = opt (types.listOf types.unspecified) [ ];
      warnings = opt (types.listOf types.str) [ ];
      # nixos/modules/system/boot/systemd.nix
      systemd.package = opt types.package pkgs.systemd;
      systemd.services = opt (types.attrsOf serviceUnit) { };
      systemd.timers = opt (types.attrsOf timerUnit) { };
      # nixos/modules/system/boot/systemd/tmpfiles.nix
      systemd.tmpfiles.rules = opt (types.listOf types.str) [ ];
      # nixos/modules/config/users-groups.nix
      users.users = opt (types.attrsOf userSubmodule) { };
      users.groups = opt (types.attrsOf groupSubmodule) { };
      # nixos/modules/security/polkit.nix: off by default since NixOS 22.05
      # (nixpkgs#156858).
      security.polkit.enable = opt types.bool false;
      security.polkit.extraConfig = opt types.lines "";
      # nixos/modules/security/sudo.nix
      security.sudo.enable = opt types.bool true;
      security.sudo.extraRules = opt (types.listOf sudoRule) [ ];
      # nixos/modules/system/etc/etc.nix
      environment.etc = opt (types.attrsOf etcEntry) { };
      # nixos/modules/config/system-path.nix
      environment.systemPackages = opt (types.listOf types.package) [ ];
      # nixos/modules/system/activation/top-level.nix
      system.checks = opt (types.listOf types.package) [ ];
      # nixos/modules/programs/ssh.nix
      programs.ssh.knownHosts = opt (types.attrsOf (types.attrsOf types.anything)) { };
      programs.ssh.package = opt types.package pkgs.openssh;
      # nixos/modules/config/nix.nix
      nix.package = opt types.package pkgs.nix;
      # nixos/modules/services/networking/ssh/sshd.nix
      services.openssh.enable = opt types.bool false;
      # nixos/modules/services/monitoring/prometheus/exporters.nix: one
      # submodule option holding a submodule option per exporter, as there, so
      # a module whose definitions there depend on `exporters.node.enable`
      # recurses here as it would in NixOS. node's options: mkExporterOpts
      # (enable, extraFlags) and exporters/node.nix (enabledCollectors: no
      # collector beyond node_exporter's own defaults; `[ "systemd" ]` is only
      # its example).
      services.prometheus.exporters = mkOption {
        type = types.submodule {
          options.node = mkOption {
            type = types.submodule {
              options = {
                enable = opt types.bool false;
                enabledCollectors = opt (types.listOf types.str) [ ];
                extraFlags = opt (types.listOf types.str) [ ];
              };
            };
            internal = true;
            default = { };
          };
        };
        default = { };
      };
    };
    config._module.args.pkgs = pkgs;
  };

  # Options whose nixpkgs default depends on another option's value.
  bootStubs =
    { config, ... }:
    {
      # nixos/modules/virtualisation/nixos-containers.nix
      options.boot.isContainer = opt types.bool false;
      # nixos/modules/system/boot/loader/grub/grub.nix (systemd-boot.nix sets
      # enable = mkDefault false when it is enabled).
      options.boot.loader.grub.enable = opt types.bool (!config.boot.isContainer);
      options.boot.loader.grub.default = opt (types.either types.int types.str) 0;
    };

  hostConfig =
    settings:
    let
      parsed = builtins.fromJSON settings;
    in
    {
      config = lib.optionalAttrs (parsed != null) (
        {
          services = removeAttrs parsed [
            "users"
            "_security"
            "_boot"
          ];
        }
        // lib.optionalAttrs (parsed ? users) { inherit (parsed) users; }
        // lib.optionalAttrs (parsed ? _security) { security = parsed._security; }
        // lib.optionalAttrs (parsed ? _boot) { boot = parsed._boot; }
      );
    };

  evalNixos =
    modules: hostModule:
    let
      eval = lib.evalModules {
        modules = [
          nixosStubs
          bootStubs
        ]
        ++ modules
        ++ [ hostModule ];
      };
      inherit (eval) config;
    in
    {
      inherit config;
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      inherit (config) warnings;
      # Every visible option of the module with what `nixos-option` shows.
      docs = map (o: {
        inherit (o) name description type;
        default = o.default or null;
        example = o.example or null;
      }) (
        lib.filter (
          o: o.visible && !o.internal && lib.hasPrefix "services.lab-orchestrator" o.name
        ) (lib.optionAttrSetToDocList eval.options)
      );
    };

  controllerView =
    evaluation:
    let
      inherit (evaluation) config;
      cfg = config.services.lab-orchestrator;
    in
    {
      inherit (evaluation) failedAssertions warnings docs;
      services = {
        run = config.systemd.services.lab-orchestrator or null;
        resume = config.systemd.services.lab-orchestrator-resume or null;
      };
      timer = config.systemd.timers.lab-orchestrator or null;
      configFiles = lib.mapAttrs (
        _: file:
        if builtins.isString file then
          {
            path = file;
            text = null;
          }
        else
          {
            path = file.outPath;
            inherit (file) text;
          }
      ) (if cfg.enable then cfg.configFiles else { });
      checks = map (c: { inherit (c) name buildCommand; }) config.system.checks;
      etc = lib.mapAttrs (_: entry: entry.source) config.environment.etc;
      polkitEnable = config.security.polkit.enable;
      polkit = config.security.polkit.extraConfig;
      users = config.users.users;
      groups = lib.attrNames config.users.groups;
      systemPackages = config.environment.systemPackages;
      tmpfiles = config.systemd.tmpfiles.rules;
      nodeExporter = config.services.prometheus.exporters.node;
    };

  targetView =
    evaluation:
    let
      inherit (evaluation) config;
      helper = lib.findFirst (
        p: p.name == "lab-orchestrator-target"
      ) null config.environment.systemPackages;
    in
    {
      inherit (evaluation) failedAssertions warnings docs;
      users = config.users.users;
      groups = lib.attrNames config.users.groups;
      sudoRules = config.security.sudo.extraRules;
      systemPackages = map (p: p.name) config.environment.systemPackages;
      helper =
        if helper == null then
          null
        else
          {
            # Not `outPath`: JSON would print such an attrset as that string.
            storePath = helper.outPath;
            inherit (helper.meta) mainProgram;
            inherit (helper.passedAttrs) name text;
            otherArgs = lib.attrNames (
              removeAttrs helper.passedAttrs [
                "name"
                "text"
              ]
            );
          };
    };

  inherit (flake.nixosModules) default;
  targetModule = flake.nixosModules.target;
  controllerHost = if controllerFile != "" then import controllerFile else hostConfig controller;

  package = flake.packages.x86_64-linux.default.passedAttrs;
in
{
  flake = {
    inputs = (import (repo + "/flake.nix")).inputs;
    packages = lib.mapAttrs (_: lib.attrNames) flake.packages;
    nixosModules = lib.attrNames flake.nixosModules;
    checks = lib.mapAttrs (_: lib.attrNames) flake.checks;
    devShells = lib.mapAttrs (_: lib.attrNames) flake.devShells;
    overlay = lib.attrNames (flake.overlays.default pkgs pkgs);
  };

  package = {
    inherit (package) pname version pyproject;
    inherit (package.meta) mainProgram;
    dependencies = map (d: d.pname) package.dependencies;
    build-system = map (d: d.pname) package.build-system;
  };

  controller = controllerView (evalNixos [ default ] controllerHost);
  target = targetView (evalNixos [ targetModule ] (hostConfig target));
  both =
    if both == "null" then
      null
    else
      let
        evaluation = evalNixos [
          default
          targetModule
        ] (hostConfig both);
      in
      {
        controller = controllerView evaluation;
        target = targetView evaluation;
      };
}
