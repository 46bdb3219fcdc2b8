{
  description = "modelgate: a tiny, fast, stateless HTTP router for OpenAI-compatible LLM APIs";

  # No flake.lock is committed: the project's machines cannot reach nixpkgs to create one.
  # The first `nix build`/`nix flake check` writes it; commit it in your own fork if you want
  # the pin (or pass `--override-input nixpkgs ...`).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      lib = nixpkgs.lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      # Not `pkgs.system`: that is an alias (a warning, and an error with allowAliases = false).
      systemOf = pkgs: pkgs.stdenv.hostPlatform.system;
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nix/package.nix { };
        modelgate = self.packages.${systemOf pkgs}.default;
        # Statically linked (musl) build, the same kind scripts/static-build.sh makes.
        static = pkgs.pkgsStatic.callPackage ./nix/package.nix { };
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = lib.getExe self.packages.${systemOf pkgs}.default;
          meta.description = "modelgate, the LLM API router";
        };
      });

      overlays.default = final: _prev: {
        modelgate = final.callPackage ./nix/package.nix { };
      };

      # services.modelgate; its package defaults to this flake's build for the host's system.
      nixosModules.default =
        { pkgs, lib, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.modelgate.package = lib.mkDefault self.packages.${systemOf pkgs}.default;
        };
      nixosModules.modelgate = self.nixosModules.default;

      checks = forAllSystems (
        pkgs:
        let
          modelgate = self.packages.${systemOf pkgs}.default;
        in
        {
          package = modelgate;
          # The shipped example config passes `modelgate --check` (no secret is read).
          config-check = pkgs.runCommand "modelgate-config-check" { nativeBuildInputs = [ modelgate ]; } ''
            modelgate --version
            modelgate --check --config ${./examples/config.json}
            touch $out
          '';
          # The stub-module-system check scripts/nix-check.sh runs without nixpkgs.
          module-stub =
            let
              result = import ./nix/tests/eval-stub.nix { };
            in
            pkgs.runCommand "modelgate-module-stub" { } ''
              echo ${lib.escapeShellArg result.summary}
              touch $out
            '';
          # The real test: a VM running the module (socket activation, credentials, reload,
          # a request through modelgate to a mock upstream).
          vm = pkgs.testers.runNixOSTest (import ./nix/tests/vm.nix { modelgateModule = self.nixosModules.default; });
        }
        # Eval-only: the module in `nixpkgs.lib.nixosSystem` (minimal, full, Docker host, and an
        # invalid worker name), failing on any failed assertion or warning. No KVM needed.
        // import ./nix/tests/eval-nixos.nix {
          inherit lib pkgs;
          inherit (nixpkgs.lib) nixosSystem;
          system = systemOf pkgs;
          modelgateModule = self.nixosModules.default;
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${systemOf pkgs}.default ];
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            rust-analyzer
            curl
            python3
            file
            buildah
          ];
        };
      });

      # RFC 166 style (what nixpkgs formats with; `nixfmt-rfc-style` is its old name).
      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
