# modelgate built from this repository's Cargo.lock (no network beyond the crate sources the
# lock file pins). `pkgs.callPackage ./nix/package.nix { }`; for a static musl binary use
# `pkgs.pkgsStatic.callPackage ./nix/package.nix { }` (the flake exposes it as `static`).
{
  lib,
  rustPlatform,
}:

let
  cargoToml = lib.importTOML ../Cargo.toml;
  root = ../.;
in
rustPlatform.buildRustPackage {
  pname = "modelgate";
  inherit (cargoToml.package) version;

  # Only what cargo needs: editing docs, nix/ or scripts/ does not rebuild the package.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      (lib.fileset.maybeMissing ../tests)
      (lib.fileset.maybeMissing ../examples)
      (lib.fileset.maybeMissing ../benches)
      (lib.fileset.maybeMissing ../bench)
      (lib.fileset.maybeMissing ../build.rs)
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The unit tests run here; the integration suite (real sockets, mock upstreams, timing) runs
  # in the project's CI (.ci/run), not in the Nix sandbox.
  cargoTestFlags = [
    "--lib"
    "--bins"
  ];

  meta = {
    description = cargoToml.package.description;
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "modelgate";
    platforms = lib.platforms.linux;
  };
}
