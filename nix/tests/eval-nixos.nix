# Eval-only checks of nix/module.nix on the real NixOS module system: `nixpkgs.lib.nixosSystem`
# with a minimal config, a full one (every worker kind, shared defaults, GPU, pins, Podman,
# and nixpkgs.config.allowAliases = false so that an alias such as `pkgs.system` is an error),
# the full one on a Docker host, and one with a worker name that cannot be a unit name.
#
# Each check is a derivation whose *evaluation* fails unless the system evaluates down to
# `system.build.toplevel.drvPath` with every assertion holding and `config.warnings` empty
# (the invalid-name one: unless exactly the module's assertion fails). Nothing is built but a
# trivial `runCommand`. Run them with
#   nix flake check --no-build          (evaluates every check)
#   nix build .#checks.x86_64-linux.eval-full
# and, to make evaluation warnings (lib.warn, e.g. aliases) errors too:
#   NIX_ABORT_ON_WARN=1 nix flake check --no-build --impure
#
# scripts/nix-check.sh calls this file with the stub module system (nix/tests/stub/), which
# only proves that it evaluates there.
{
  lib,
  nixosSystem,
  pkgs,
  system,
  modelgateModule,
}:

let
  # A bootable-enough host that needs no hardware description.
  host = {
    nixpkgs.hostPlatform = system;
    system.stateVersion = lib.trivial.release;
    boot.loader.grub.enable = false;
    fileSystems."/" = {
      device = "none";
      fsType = "tmpfs";
    };
  };
  evalSystem =
    modules:
    (nixosSystem {
      modules = [
        modelgateModule
        host
      ]
      ++ modules;
    }).config;
  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  bullets = list: lib.concatMapStringsSep "\n" (m: "- ${m}") list;

  # Fails evaluation (with what went wrong) unless the system is clean.
  mkCheck =
    name: modules:
    let
      config = evalSystem modules;
      failed = failedAssertions config;
    in
    if failed != [ ] then
      throw "modelgate eval-${name}: failed assertions:\n${bullets failed}"
    else if config.warnings != [ ] then
      throw "modelgate eval-${name}: warnings:\n${bullets config.warnings}"
    else
      pkgs.runCommand "modelgate-eval-${name}"
        {
          toplevel = builtins.unsafeDiscardStringContext config.system.build.toplevel.drvPath;
        }
        ''
          echo "evaluates: $toplevel"
          touch "$out"
        '';

  minimal = {
    services.modelgate = {
      enable = true;
      settings.models.gpt.url = "https://api.openai.com";
    };
  };

  full = {
    services.modelgate = {
      enable = true;
      listen = [
        ":8080"
        {
          address = "unix:/run/modelgate/api.sock";
          group = "nginx";
        }
      ];
      openFirewall = true;
      credentials = {
        openai-key = "/run/secrets/openai-key";
        client-token = {
          path = "/etc/credstore.encrypted/modelgate-client-token";
          encrypted = true;
        };
      };
      settings = {
        authTokens = [ "\${cred:client-token}" ];
        models.gpt = {
          url = "https://api.openai.com";
          headers.Authorization = "Bearer \${cred:openai-key}";
        };
      };
      llama-cpp.defaults = {
        gpu = true;
        settings = {
          n-gpu-layers = 99;
          flash-attn = true;
        };
      };
      llama-cpp.models = {
        qwen = {
          model = "/var/lib/models/qwen.gguf";
          port = 8101;
          settings.ctx-size = 16384;
        };
        embed = {
          model = "/var/lib/models/embed.gguf";
          unixSocket = true;
          gpu = false;
          settings = {
            embeddings = true;
            flash-attn = "auto";
          };
        };
      };
      # ROCm device nodes: the NVIDIA CDI default would (rightly) warn without
      # hardware.nvidia-container-toolkit, which needs a driver configuration of its own.
      vllm.defaults = {
        image = "docker.io/vllm/vllm-openai:v0.10.2";
        devices = [
          "/dev/kfd"
          "/dev/dri"
        ];
      };
      vllm.models.big = {
        routeName = "Qwen/Qwen3-32B";
        model = "Qwen/Qwen3-32B";
        port = 8102;
        settings.max-model-len = 32768;
      };
      sglang.models.small = {
        model = "Qwen/Qwen3-0.6B";
        port = 8103;
        imageDigest = "sha256:${lib.fixedWidthString 64 "0" ""}";
        devices = [
          "/dev/kfd"
          "/dev/dri"
        ];
      };
    };
  };

  invalidName = evalSystem [
    minimal
    {
      services.modelgate.vllm.models."bad/name" = {
        model = "x";
        port = 8106;
        devices = [ ];
      };
    }
  ];
  invalidNameCheck =
    let
      failed = failedAssertions invalidName;
      ours = lib.filter (m: lib.hasInfix "\"bad/name\": the attribute name becomes a unit name" m) failed;
      router = invalidName.systemd.services.modelgate;
      # The unit lists NixOS type-checks must evaluate: the bad name is kept out of them.
      listsEvaluate = (builtins.tryEval (builtins.deepSeq (router.after ++ router.wants) true)).success;
    in
    if ours == [ ] then
      throw "modelgate eval-invalid-name: the unit-name assertion did not fail; failed:\n${bullets failed}"
    else if failed != ours then
      throw "modelgate eval-invalid-name: other assertions failed too:\n${bullets failed}"
    else if !listsEvaluate then
      throw "modelgate eval-invalid-name: systemd.services.modelgate.after/wants do not evaluate"
    else
      pkgs.runCommand "modelgate-eval-invalid-name" { } ''
        echo "the assertion is what the admin reads"
        touch "$out"
      '';
in
{
  eval-minimal = mkCheck "minimal" [ minimal ];
  eval-full = mkCheck "full" [
    full
    { nixpkgs.config.allowAliases = false; }
  ];
  eval-docker = mkCheck "docker" [
    full
    { virtualisation.oci-containers.backend = "docker"; }
  ];
  eval-invalid-name = invalidNameCheck;
}
