# The orchestrator, built from this checkout with nixpkgs' Python packages.
# Used by flake.nix (packages.default, overlays.default) and as the default of
# services.lab-orchestrator.package: `pkgs.callPackage ./package.nix { }`.
{
  lib,
  python3Packages,
}:

let
  pyproject = lib.importTOML ../pyproject.toml;
  fs = lib.fileset;
in
python3Packages.buildPythonApplication {
  pname = "lab-orchestrator";
  inherit (pyproject.project) version;
  pyproject = true;

  # Only what the build and its tests read: a local .venv, bench output or a
  # change to the docs/Nix files neither lands in the store nor rebuilds the
  # package (lib.cleanSource would keep all of those).
  src = fs.toSource {
    root = ../.;
    fileset = fs.unions [
      ../pyproject.toml
      ../orchestrator
      ../health_checks
      (fs.maybeMissing ../tests)
      # The example config, which tests load.
      (fs.maybeMissing ../config)
      # pyproject's `readme`.
      (fs.maybeMissing ../README.md)
    ];
  };

  build-system = [ python3Packages.setuptools ];

  dependencies = with python3Packages; [
    transitions
    asyncssh
    bcrypt # asyncssh: OpenSSH-format keys with a passphrase
    httpx
    tenacity
    pydantic
    pyyaml
    click
    filelock
    pytimeparse
    apprise
    prometheus-client
    sdnotify
    logging-journald
  ];

  nativeCheckInputs = with python3Packages; [
    pytestCheckHook
    pytest-asyncio
  ];

  # Not possible in the build sandbox: `netlab` tests need root, network
  # namespaces and sshd; `nix` tests evaluate this repository's Nix files
  # with nix-instantiate. (disabledTestMarks: nixpkgs >= 25.05.)
  disabledTestMarks = [
    "netlab"
    "nix"
  ];
  disabledTestPaths = [
    "tests/netlab"
    "tests/test_nix.py"
  ];

  pythonImportsCheck = [
    "orchestrator"
    "health_checks"
  ];

  meta = {
    inherit (pyproject.project) description;
    mainProgram = "orchestrator";
    platforms = lib.platforms.linux;
  };
}
