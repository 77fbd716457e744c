{
  description = "Health-gated, resumable nightly update and rolling reboot of a NixOS homelab";

  # The only input. Users add `inputs.lab-orchestrator.inputs.nixpkgs.follows
  # = "nixpkgs";` so nothing here pins a second nixpkgs. The NixOS modules do
  # not use this input at all: they build the package with the system's own
  # pkgs.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # A throwaway key pair's public half; only its format matters here.
      examplePublicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx+d3BtC5jvUBMgNLWq5/sLIp3+XBbiCm+leD+8LWR1";
    in
    {
      overlays.default = final: _prev: {
        lab-orchestrator = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: {
        lab-orchestrator = pkgs.callPackage ./nix/package.nix { };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.lab-orchestrator;
      });

      nixosModules = {
        # The controller: services.lab-orchestrator. Its `package` defaults to
        # pkgs.lab-orchestrator (with overlays.default) or else to
        # nix/package.nix built with the system's pkgs, which is the same
        # derivation as packages.default when nixpkgs follows.
        default = ./nix/module.nix;
        lab-orchestrator = self.nixosModules.default;
        # Each machine it reboots: services.lab-orchestrator-target.
        target = ./nix/target.nix;
      };

      checks = forAllSystems (
        pkgs:
        let
          inherit (pkgs.stdenv.hostPlatform) system;
          # What any NixOS system needs, and nothing the modules rely on.
          bareSystem = {
            nixpkgs.hostPlatform = system;
            system.stateVersion = lib.trivial.release;
            boot.loader.grub.enable = false;
            fileSystems."/" = {
              device = "none";
              fsType = "tmpfs";
            };
          };
          # Both modules in one real NixOS evaluation: a controller that is
          # itself the target of another controller.
          example = lib.nixosSystem {
            modules = [
              self.nixosModules.default
              self.nixosModules.target
              bareSystem
              {
                services.openssh.enable = true;
                # metrics.enable points its textfile collector at the metrics.
                services.prometheus.exporters.node.enable = true;
                programs.ssh.knownHosts.grey-area = {
                  hostNames = [ "grey-area.local" ];
                  publicKey = examplePublicKey;
                };
                services.lab-orchestrator = {
                  enable = true;
                  schedule = "02:00";
                  flake = "/var/lib/lab-orchestrator/lab";
                  sshKeyFile = "/etc/ssh/ssh_host_ed25519_key";
                  settings.ssh.user = "lab-orchestrator";
                  # Credentials (issue 9): never read at build time.
                  notify.urlsFile = "/etc/lab-orchestrator/notify-urls";
                  heartbeat.urlFile = "/etc/lab-orchestrator/heartbeat-url";
                  settings.notify.on = [
                    "aborted"
                    "done"
                  ];
                  metrics.enable = true;
                  machines = {
                    grey-area = {
                      host = "grey-area.local";
                      checks = [ { url = "http://grey-area.local:3000/"; } ];
                    };
                    self.local = true;
                  };
                };
                services.lab-orchestrator-target = {
                  enable = true;
                  authorizedKeys = [ examplePublicKey ];
                };
              }
            ];
          };
          # The original module's own lines, with its local machine declared
          # (issue 8): nothing else is needed.
          seed = lib.nixosSystem {
            modules = [
              self.nixosModules.default
              bareSystem
              {
                users.users.geir.isNormalUser = true;
                services.lab-orchestrator = {
                  enable = true;
                  schedule = "02:00";
                  user = "geir";
                  machines.self.local = true;
                };
              }
            ];
          };

          # Builds what the modules generate without building a whole system:
          # the three units, sudoers (checked by visudo), the polkit rules and
          # the build-time checks (`systemd-analyze calendar` of the schedule,
          # `orchestrator validate-config` of the config files); with
          # node_exporter, its unit (the textfile collector's flag).
          moduleOutputs =
            name:
            { config, ... }:
            let
              failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
              unit = unitName: config.systemd.units.${unitName}.unit;
            in
            if failedAssertions != [ ] then
              throw (lib.concatStringsSep "\n" failedAssertions)
            else
              pkgs.linkFarm name (
                {
                  "lab-orchestrator.service" = unit "lab-orchestrator.service";
                  "lab-orchestrator.timer" = unit "lab-orchestrator.timer";
                  "lab-orchestrator-resume.service" = unit "lab-orchestrator-resume.service";
                  "sudoers" = config.environment.etc.sudoers.source;
                  "polkit.rules" = config.environment.etc."polkit-1/rules.d/10-nixos.rules".source;
                  "config.yaml" = config.environment.etc."lab-orchestrator/config.yaml".source;
                }
                // lib.optionalAttrs config.services.prometheus.exporters.node.enable {
                  "prometheus-node-exporter.service" = unit "prometheus-node-exporter.service";
                }
                // lib.listToAttrs (
                  map (check: lib.nameValuePair check.name check) (
                    lib.filter (check: lib.hasPrefix "lab-orchestrator" check.name) config.system.checks
                  )
                )
              );
        in
        {
          package = self.packages.${system}.default;
          module = moduleOutputs "lab-orchestrator-module" example;
          module-seed = moduleOutputs "lab-orchestrator-module-seed" seed;
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          # Python with the runtime dependencies, from the package itself.
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = [
            pkgs.python3Packages.pytest
            pkgs.python3Packages.pytest-asyncio
            pkgs.python3Packages.mypy
            pkgs.python3Packages.types-pyyaml
            pkgs.ruff
            pkgs.nix
          ];
        };
      });
    };
}
