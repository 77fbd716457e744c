# Evaluates this repository's flake outputs and NixOS modules with the real
# nixpkgs `lib` (lib.evalModules) but without nixpkgs or NixOS: the few NixOS
# options the modules set or read are declared below with loose types, and
# `pkgs` is a stand-in whose derivations are plain attrsets carrying their
# inputs (`text`, `buildCommand`) so tests can inspect and run them.
#
#   nix-instantiate --store dummy:// --eval --strict --json tests/nix_eval/eval.nix \
#     --argstr nixpkgsLib /path/to/nixpkgs/lib --argstr repo "$PWD" \
#     --argstr packageOut "$PWD/.venv" --argstr controller '{...}' --argstr target '{...}'
#
# `controller` / `target` are JSON for `services` (e.g. {"lab-orchestrator":
# {...}}), plus optional top-level "users" and "_security" keys that go to
# `users` and `security`.
{
  nixpkgsLib,
  repo,
  # Stands in for the built package: "${packageOut}/bin/orchestrator" must run.
  packageOut,
  controller ? "null",
  target ? "null",
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
    "httpx"
    "tenacity"
    "pydantic"
    "pyyaml"
    "click"
    "rich"
    "filelock"
    "pytimeparse"
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
    git = fakeDrv "git" { };
    writeText = name: text: fakeDrv name { inherit text; };
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
      buildPythonApplication = attrs: fakeDrv attrs.pname { passedAttrs = removeAttrs attrs [ "src" ]; };
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

  # The NixOS options the modules touch, declared as loosely as will merge.
  loose = types.attrsOf types.anything;
  unit = types.submodule {
    freeformType = loose;
    options = {
      wantedBy = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      after = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      wants = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      path = mkOption {
        type = types.listOf (types.either types.package types.str);
        default = [ ];
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      serviceConfig = mkOption {
        type = loose;
        default = { };
      };
      unitConfig = mkOption {
        type = loose;
        default = { };
      };
      timerConfig = mkOption {
        type = loose;
        default = { };
      };
    };
  };
  freeformAttrs = types.attrsOf (types.submodule { freeformType = loose; });
  opt = type: default: mkOption { inherit type default; };

  nixosStubs = {
    options = {
      assertions = opt (types.listOf types.unspecified) [ ];
      warnings = opt (types.listOf types.str) [ ];
      systemd.package = opt types.package (fakeDrv "systemd" { });
      systemd.services = opt (types.attrsOf unit) { };
      systemd.timers = opt (types.attrsOf unit) { };
      users.users = opt freeformAttrs { };
      users.groups = opt freeformAttrs { };
      security.polkit.enable = opt types.bool true;
      security.polkit.extraConfig = opt types.lines "";
      security.sudo.enable = opt types.bool true;
      security.sudo.extraRules = opt (types.listOf types.anything) [ ];
      environment.etc = opt freeformAttrs { };
      environment.systemPackages = opt (types.listOf types.package) [ ];
      system.checks = opt (types.listOf types.package) [ ];
      programs.ssh.knownHosts = opt loose { };
      programs.ssh.package = opt types.package (fakeDrv "openssh" { });
      nix.package = opt types.package (fakeDrv "nix" { });
      services.openssh.enable = opt types.bool false;
    };
    config._module.args.pkgs = pkgs;
  };

  evalNixos =
    module: settings:
    let
      parsed = builtins.fromJSON settings;
      eval = lib.evalModules {
        modules = [
          nixosStubs
          module
          {
            config = lib.optionalAttrs (parsed != null) (
              {
                services = removeAttrs parsed [
                  "users"
                  "_security"
                ];
              }
              // lib.optionalAttrs (parsed ? users) { inherit (parsed) users; }
              // lib.optionalAttrs (parsed ? _security) { security = parsed._security; }
            );
          }
        ];
      };
      inherit (eval) config;
    in
    {
      inherit config;
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      inherit (config) warnings;
      # Every visible option of the module with what `nixos-option` shows.
      docs = map (o: { inherit (o) name description type; }) (
        lib.filter (
          o: o.visible && !o.internal && lib.hasPrefix "services.lab-orchestrator" o.name
        ) (lib.optionAttrSetToDocList eval.options)
      );
    };

  controllerEval = evalNixos flake.nixosModules.default controller;
  targetEval = evalNixos flake.nixosModules.target target;

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

  controller =
    let
      inherit (controllerEval) config;
      cfg = config.services.lab-orchestrator;
    in
    {
      inherit (controllerEval) failedAssertions warnings docs;
      services = {
        run = config.systemd.services.lab-orchestrator or null;
        resume = config.systemd.services.lab-orchestrator-resume or null;
      };
      timer = config.systemd.timers.lab-orchestrator or null;
      configFiles = lib.mapAttrs (_: file: {
        path = file.outPath;
        inherit (file) text;
      }) (if cfg.enable then cfg.configFiles else { });
      checks = map (c: { inherit (c) name buildCommand; }) config.system.checks;
      etc = lib.mapAttrs (_: entry: entry.source or entry.text or null) config.environment.etc;
      polkit = config.security.polkit.extraConfig;
      users = config.users.users;
      groups = lib.attrNames config.users.groups;
      systemPackages = config.environment.systemPackages;
    };

  target =
    let
      inherit (targetEval) config;
    in
    {
      inherit (targetEval) failedAssertions docs;
      users = config.users.users;
      groups = lib.attrNames config.users.groups;
      sudoRules = config.security.sudo.extraRules;
    };
}
