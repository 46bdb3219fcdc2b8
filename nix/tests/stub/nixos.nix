# Stand-ins for the parts of NixOS that nix/module.nix defines or reads, for the stub module
# system of ./lib.nix: the option declarations (with nixpkgs' types where they matter: unit
# dependency lists are lists of unit names, `serviceConfig` values merge like systemd unit
# options, the oci-containers backend is an enum whose default follows stateVersion), a model
# of virtualisation.oci-containers' config (units named <backend>-<name>, TimeoutStartSec = 0,
# `--pull`, the backend engine enabled), fake packages, and `toplevel`, which checks
# assertions like NixOS does.
#
# Read from nixpkgs (nixos/lib/systemd-lib.nix, systemd-unit-options.nix,
# nixos/modules/virtualisation/oci-containers.nix, system/activation/top-level.nix), not
# imported: whatever those files do beyond what is written here is not checked.
{ lib }:

let
  b = builtins;
  inherit (lib) mkOption types;

  # nixos/lib/systemd-lib.nix
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";
  # systemd-lib's unitOption: lists concatenate (a scalar joins as a one-element list), other
  # values must be equal.
  unitOption = rec {
    description = "systemd option";
    check =
      v:
      let
        scalar = x: b.isBool x || b.isInt x || b.isString x || b.isPath x || (b.isAttrs x && x ? outPath);
      in
      scalar v || (b.isList v && b.all scalar v);
    merge =
      loc: values:
      if !(b.all check values) then
        b.throw "A definition for option `${b.concatStringsSep "." loc}' is not of type `${description}'."
      else if b.any b.isList values then
        b.concatMap (v: if b.isList v then v else [ v ]) values
      else if b.all (v: v == b.head values) values then
        b.head values
      else
        b.throw "The option `${b.concatStringsSep "." loc}' has conflicting definition values.";
  };
  unitList = mkOption {
    type = types.listOf unitNameType;
    default = [ ];
  };
  unitOptions = {
    enable = mkOption {
      type = types.bool;
      default = true;
    };
    description = mkOption {
      type = types.str;
      default = "";
    };
    requires = unitList;
    wants = unitList;
    upholds = unitList;
    after = unitList;
    before = unitList;
    bindsTo = unitList;
    partOf = unitList;
    conflicts = unitList;
    requisite = unitList;
    wantedBy = unitList;
    requiredBy = unitList;
    upheldBy = unitList;
    unitConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
    };
    restartTriggers = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    reloadTriggers = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
  };
  lines = mkOption {
    type = types.lines;
    default = "";
  };
  serviceOptions = unitOptions // {
    environment = mkOption {
      type = types.attrsOf (
        types.nullOr (
          types.oneOf [
            types.str
            types.path
            types.package
          ]
        )
      );
      default = { };
    };
    path = mkOption {
      type = types.listOf (types.oneOf [
        types.package
        types.str
      ]);
      default = [ ];
    };
    serviceConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
    };
    script = lines;
    preStart = lines;
    postStart = lines;
    preStop = lines;
    postStop = lines;
  };
  socketOptions = unitOptions // {
    listenStreams = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    socketConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
    };
  };

  fakePkg = name: {
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };
  jsonType =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        (types.attrsOf jsonType)
        (types.listOf jsonType)
      ]
    )
    // {
      description = "JSON value";
    };

  pkgs = {
    # The system's pkgs (nixpkgs.hostPlatform is not modelled): x86_64-linux.
    stdenv.hostPlatform.system = "x86_64-linux";
    formats.json =
      { }:
      {
        type = jsonType;
        generate = name: value: (fakePkg name) // { inherit value; };
      };
    callPackage = _path: _args: fakePkg "modelgate";
    runCommand = name: env: script: (fakePkg name) // { inherit env script; };
    coreutils = fakePkg "coreutils";
    llama-cpp = fakePkg "llama-cpp";
    python3 = fakePkg "python3";
    curl = fakePkg "curl";
    iproute2 = fakePkg "iproute2";
    writeScript = name: _text: fakePkg name;
    writeTextFile = { name, ... }: fakePkg name;
    podman = fakePkg "podman";
    docker = fakePkg "docker";
  };

  # ---- NixOS option declarations ----------------------------------------------------------
  base = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      environment.etc = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.source = mkOption {
              type = types.nullOr types.path;
              default = null;
            };
            options.text = mkOption {
              type = types.nullOr types.lines;
              default = null;
            };
          }
        );
        default = { };
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      # Each is a whole other system in NixOS; here only carried (the checks evaluate it).
      specialisation = mkOption {
        type = types.attrsOf types.anything;
        default = { };
      };
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      system.stateVersion = mkOption {
        type = types.str;
        default = "25.11";
      };
      hardware.nvidia-container-toolkit.enable = mkOption {
        type = types.bool;
        default = false;
      };
      virtualisation.podman.enable = mkOption {
        type = types.bool;
        default = false;
      };
      virtualisation.docker.enable = mkOption {
        type = types.bool;
        default = false;
      };
      systemd.tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule { options = serviceOptions; });
        default = { };
      };
      systemd.sockets = mkOption {
        type = types.attrsOf (types.submodule { options = socketOptions; });
        default = { };
      };
    };
  };

  # ---- virtualisation.oci-containers, as nixpkgs has it (the parts the module uses) --------
  ociContainers =
    { config, ... }:
    let
      cfg = config.virtualisation.oci-containers;
      containerOptions =
        { name, ... }:
        {
          options = {
            image = mkOption { type = types.str; };
            cmd = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
            environment = mkOption {
              type = types.attrsOf types.str;
              default = { };
            };
            environmentFiles = mkOption {
              type = types.listOf types.path;
              default = [ ];
            };
            ports = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
            volumes = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
            extraOptions = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
            autoStart = mkOption {
              type = types.bool;
              default = true;
            };
            pull = mkOption {
              type = types.enum [
                "always"
                "missing"
                "never"
                "newer"
              ];
              default = "missing";
            };
            serviceName = mkOption {
              type = types.str;
              default = "${cfg.backend}-${name}";
            };
          };
        };
      mkService = name: c: {
        wantedBy = lib.optional c.autoStart "multi-user.target";
        wants = [ "network-online.target" ];
        after =
          lib.optionals (cfg.backend == "docker") [
            "docker.service"
            "docker.socket"
          ]
          ++ [ "network-online.target" ];
        path = [ pkgs.${cfg.backend} ];
        script = b.concatStringsSep " \\\n  " (
          [
            "exec ${cfg.backend} "
            "run"
            "--name=${lib.escapeShellArg name}"
          ]
          ++ map (p: "-p ${lib.escapeShellArg p}") c.ports
          ++ map (v: "-v ${lib.escapeShellArg v}") c.volumes
          ++ [ "--pull ${lib.escapeShellArg c.pull}" ]
          ++ map lib.escapeShellArg c.extraOptions
          ++ [ c.image ]
          ++ map lib.escapeShellArg c.cmd
        );
        serviceConfig = {
          TimeoutStartSec = 0;
          TimeoutStopSec = 120;
          Restart = "always";
        }
        // lib.optionalAttrs (cfg.backend == "podman") {
          Type = "notify";
          NotifyAccess = "all";
        };
      };
    in
    {
      options.virtualisation.oci-containers = {
        backend = mkOption {
          type = types.enum [
            "podman"
            "docker"
          ];
          default = if lib.versionAtLeast config.system.stateVersion "22.05" then "podman" else "docker";
        };
        containers = mkOption {
          type = types.attrsOf (types.submodule containerOptions);
          default = { };
        };
      };
      config = lib.mkIf (cfg.containers != { }) (
        lib.mkMerge [
          {
            systemd.services = lib.mapAttrs' (n: c: lib.nameValuePair c.serviceName (mkService n c)) cfg.containers;
          }
          (lib.mkIf (cfg.backend == "podman") { virtualisation.podman.enable = true; })
          (lib.mkIf (cfg.backend == "docker") { virtualisation.docker.enable = true; })
        ]
      );
    };

  # ---- what `nixos-rebuild` evaluates --------------------------------------------------------
  # Failed assertions are reported before anything else is built, as top-level.nix does. To be
  # on the safe side, the stub first forces every unit's dependency lists and unit names (in
  # the issue's report, NixOS met a type error in `after` before it read the assertions): so a
  # name the module lets through into a unit fails here with the type error instead of the
  # module's assertion, whichever order the real NixOS uses.
  toplevel =
    config:
    let
      units = config.systemd.services // config.systemd.sockets;
      depLists = lib.concatMap (
        n:
        let
          u = units.${n};
        in
        u.requires ++ u.wants ++ u.after ++ u.before ++ u.wantedBy ++ u.partOf ++ u.bindsTo
      ) (b.attrNames units);
      unitNames = map (
        n:
        if b.match "[a-zA-Z0-9@%:_.\\-]+" n != null then
          n
        else
          b.throw "stub: `${n}' cannot be a unit name (systemd.services/sockets attribute)"
      ) (b.attrNames units);
      failed = map (a: a.message) (b.filter (a: !a.assertion) config.assertions);
    in
    b.deepSeq depLists (
      b.deepSeq unitNames (
        if failed != [ ] then
          b.throw "\nFailed assertions:\n${b.concatStringsSep "\n" (map (m: "- ${m}") failed)}"
        else
          # (`system` holds system.build.toplevel, which is this.)
          b.deepSeq (removeAttrs config [ "system" ]) {
            inherit (config) warnings;
          }
      )
    );

  # The host options nix/tests/eval-nixos.nix sets, and `system.build.toplevel` as the
  # result of `toplevel` (its drvPath is a made-up name: nothing is instantiated).
  host =
    { config, ... }:
    {
      options = {
        nixpkgs.hostPlatform = mkOption { type = types.str; };
        # The stub's pkgs has no aliases at all (no `pkgs.system`), as with allowAliases = false.
        nixpkgs.config = mkOption {
          type = types.attrsOf types.anything;
          default = { };
        };
        boot.loader.grub.enable = mkOption {
          type = types.bool;
          default = true;
        };
        fileSystems = mkOption {
          type = types.attrsOf types.anything;
          default = { };
        };
        system.build.toplevel = mkOption {
          type = types.anything;
          default = b.seq (toplevel config) {
            drvPath = "/nix/store/00000000000000000000000000000000-nixos-system-stub.drv";
          };
        };
      };
    };
in
{
  inherit pkgs toplevel;
  modules = [
    base
    ociContainers
  ];
  # nixpkgs.lib.nixosSystem's stand-in (the returned `config` and `options` only).
  nixosSystem =
    { modules }:
    lib.evalModules {
      modules = [
        base
        ociContainers
        host
      ]
      ++ modules;
      args = { inherit pkgs; };
    };
}
