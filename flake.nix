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
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nix/package.nix { };
        modelgate = self.packages.${pkgs.system}.default;
        # Statically linked (musl) build, the same kind scripts/static-build.sh makes.
        static = pkgs.pkgsStatic.callPackage ./nix/package.nix { };
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = lib.getExe self.packages.${pkgs.system}.default;
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
          services.modelgate.package = lib.mkDefault self.packages.${pkgs.system}.default;
        };
      nixosModules.modelgate = self.nixosModules.default;

      checks = forAllSystems (
        pkgs:
        let
          modelgate = self.packages.${pkgs.system}.default;
        in
        {
          package = modelgate;
          # The shipped example config passes `modelgate --check` (no secret is read).
          config-check = pkgs.runCommand "modelgate-config-check" { nativeBuildInputs = [ modelgate ]; } ''
            modelgate --version
            modelgate --check --config ${./examples/config.json}
            touch $out
          '';
          # The same syntax-and-shape check scripts/nix-check.sh runs without nixpkgs.
          module-shape =
            let
              result = import ./nix/tests/eval-stub.nix { };
            in
            pkgs.runCommand "modelgate-module-shape" { } ''
              echo ${lib.escapeShellArg result.summary}
              touch $out
            '';
          # The real test: a VM running the module (socket activation, credentials, reload,
          # a request through modelgate to a mock upstream).
          vm = pkgs.testers.runNixOSTest (import ./nix/tests/vm.nix { modelgateModule = self.nixosModules.default; });
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.system}.default ];
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

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
