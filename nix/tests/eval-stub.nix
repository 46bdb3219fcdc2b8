# Evaluates nix/module.nix (and flake.nix, the eval-only checks of nix/tests/eval-nixos.nix,
# and the VM test's machine) without nixpkgs: on the stub module system of ./stub/lib.nix with
# ./stub/nixos.nix, and checks what comes out. scripts/nix-check.sh runs it:
#
#   nix-instantiate --eval --strict nix/tests/eval-stub.nix -A summary
# prints a summary, or fails naming every check that did not hold;
#   nix-instantiate --eval --strict nix/tests/eval-stub.nix -A failures.NAME
# must fail, with the message nix-check.sh expects (an assertion, a type error, a conflict).
#
# What this can prove: the module's logic (what it renders for each configuration), that it
# merges with the other definitions of the same options the way nixpkgs' module system
# merges them (priorities, list concatenation, single-valued conflicts), that unit-name lists
# hold unit names, which error a bad configuration gets first, and that nothing reads an alias
# such as `pkgs.system` (the stub's pkgs has none).
# What it cannot: that nixpkgs' own modules still declare and use these options as the stand-
# ins assume, that the real types/merge functions agree in the corners not modelled (see
# stub/lib.nix), that systemd accepts the units, or that anything runs. That is the job of the
# flake's eval-* checks (real nixpkgs) and the VM test (nix/tests/vm.nix), which need Nix with
# nixpkgs (and KVM) and cannot run on the project's machines.
{ }:

let
  b = builtins;
  lib = import ./stub/lib.nix;
  nixos = import ./stub/nixos.nix { inherit lib; };

  # ---- evaluating --------------------------------------------------------------------------
  evalSystem =
    modules:
    let
      r = lib.evalModules {
        modules = nixos.modules ++ [ ../module.nix ] ++ modules;
        args = { inherit (nixos) pkgs; };
      };
    in
    r.config
    // {
      _options = r.options;
      _toplevel = nixos.toplevel r.config;
    };
  eval = mg: evalSystem [ { services.modelgate = mg; } ];
  # Whether evaluating (deeply) fails.
  fails = v: !(b.tryEval (b.deepSeq v true)).success;
  failedAssertions = out: map (a: a.message) (b.filter (a: !a.assertion) out.assertions);
  contains = lib.hasInfix;
  # The words of a unit's ExecStart as one string, for matching rendered flags.
  execStart = out: unit: out.systemd.services.${unit}.serviceConfig.ExecStart;

  # ---- the router alone -----------------------------------------------------------------------
  basic = eval {
    enable = true;
    listen = [
      "127.0.0.1:8080"
      {
        address = "unix:/run/modelgate/api.sock";
        group = "nginx";
      }
      ":9090"
    ];
    credentials = {
      openai-key = "/run/secrets/openai-key";
      client-token = {
        path = "/etc/credstore.encrypted/client-token";
        encrypted = true;
      };
    };
    environmentFile = "/run/secrets/modelgate.env";
    openFirewall = true;
    settings = {
      authTokens = [ "\${cred:client-token}" ];
      timeouts.shutdown = 10;
      models.gpt = {
        url = "https://api.openai.com";
        headers.Authorization = "Bearer \${cred:openai-key}";
      };
    };
  };
  svc = basic.systemd.services.modelgate;
  sc = svc.serviceConfig;
  rendered = basic.environment.etc."modelgate/config.json".source;

  hardening = {
    DynamicUser = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateUsers = true;
    PrivateIPC = true;
    PrivateMounts = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    NoNewPrivileges = true;
    RemoveIPC = true;
    UMask = "0077";
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
      "~@resources"
    ];
    RestrictAddressFamilies = [
      "AF_INET"
      "AF_INET6"
      "AF_UNIX"
    ];
    SocketBindDeny = "any";
  };

  # ---- workers ------------------------------------------------------------------------------
  digest = "sha256:${lib.fixedWidthString 64 "a" ""}";
  workersConfig = {
    enable = true;
    settings.models.gpt.url = "https://api.openai.com";
    llama-cpp.defaults = {
      gpu = true;
      settings = {
        n-gpu-layers = 99;
        flash-attn = true;
        ctx-size = 4096;
      };
      environment.GGML_SHARED = "1";
    };
    llama-cpp.models = {
      qwen = {
        model = "/var/lib/models/qwen.gguf";
        port = 8101;
        settings = {
          ctx-size = 8192;
          no-webui = false;
          lora = [
            "/m/a.gguf"
            "/m/b.gguf"
          ];
        };
      };
      small = {
        model = "/var/lib/models/small.gguf";
        unixSocket = true;
        routeName = "org/small";
        gpu = false;
        settings.flash-attn = "auto";
      };
      off = {
        enable = false;
        model = "/x.gguf";
        port = 8109;
      };
    };
    vllm.defaults = {
      image = "docker.io/vllm/vllm-openai:v0.10.2";
      settings.gpu-memory-utilization = 0.9;
      environmentFile = "/run/secrets/hf.env";
    };
    vllm.models.big = {
      model = "Qwen/Qwen3-8B";
      port = 8102;
      settings.max-model-len = 32768;
      environmentFile = "/run/secrets/big.env";
    };
    vllm.models.pinned = {
      model = "Qwen/Qwen3-0.6B";
      port = 8104;
      imageDigest = digest;
      devices = [ ];
    };
    sglang.models.fast = {
      model = "Qwen/Qwen3-0.6B";
      port = 8103;
    };
  };
  workers = eval workersConfig;
  wsvc = workers.systemd.services;
  qwenSc = wsvc.modelgate-llama-cpp-qwen.serviceConfig;
  smallSc = wsvc.modelgate-llama-cpp-small.serviceConfig;
  containers = workers.virtualisation.oci-containers.containers;

  # The same workers on a host that runs Docker (set at normal priority, as a host would).
  docker = evalSystem [
    { services.modelgate = workersConfig; }
    { virtualisation.oci-containers.backend = "docker"; }
  ];
  # A host from before 22.05, where oci-containers defaults to Docker.
  oldHost = evalSystem [
    { services.modelgate = workersConfig; }
    { system.stateVersion = "21.11"; }
  ];
  # Controls that the stub merges backends as nixpkgs does: a second plain definition
  # conflicts (what the module used to do on Docker hosts); an mkDefault one yields.
  backendConflict = evalSystem [
    { services.modelgate = workersConfig; }
    { virtualisation.oci-containers.backend = "docker"; }
    { virtualisation.oci-containers.backend = "podman"; }
  ];
  backendMkDefault = evalSystem [
    { services.modelgate = workersConfig; }
    { virtualisation.oci-containers.backend = "docker"; }
    { virtualisation.oci-containers.backend = lib.mkDefault "podman"; }
  ];
  dockerNewer = evalSystem [
    { services.modelgate = workersConfig // { vllm.models.big = workersConfig.vllm.models.big // { pull = "newer"; }; }; }
    { virtualisation.oci-containers.backend = "docker"; }
  ];
  parallel = eval (workersConfig // { sequentialStart = false; });

  # ---- bad configurations ---------------------------------------------------------------------
  collide = eval {
    enable = true;
    listen = [ "127.0.0.1:8101" ];
    settings.models.qwen.url = "http://127.0.0.1:1";
    llama-cpp.models.qwen = {
      model = "/m.gguf";
      port = 8101;
    };
    llama-cpp.models.both = {
      model = "/m.gguf";
      port = 8105;
      unixSocket = true;
    };
  };
  collideMsgs = failedAssertions collide;
  hasMsg = sub: b.any (m: b.match ".*${sub}.*" m != null) collideMsgs;

  invalidName = eval {
    enable = true;
    settings.models.gpt.url = "https://api.openai.com";
    vllm.models."bad/name" = {
      model = "x";
      port = 8106;
      devices = [ ];
    };
    llama-cpp.models."bad name" = {
      model = "/m.gguf";
      port = 8107;
    };
    llama-cpp.models.good = {
      model = "/m.gguf";
      port = 8108;
    };
  };
  invalidMsgs = failedAssertions invalidName;
  # Control: the stub's unit-name type does reject a bad name in `after`.
  badAfter = evalSystem [
    {
      services.modelgate = {
        enable = true;
        settings.models.gpt.url = "https://api.openai.com";
      };
    }
    { systemd.services.other.after = [ "bad/name.service" ]; }
  ];

  disabled = eval { settings.models.gpt.url = "http://127.0.0.1:1"; };

  # ---- flake.nix on a fake nixpkgs without aliases ------------------------------------------
  fakeNixpkgs = {
    lib = lib // {
      inherit (nixos) nixosSystem;
    };
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (
      system:
      nixos.pkgs
      // {
        stdenv.hostPlatform.system = system;
        # So that the module's package can be told from the flake's.
        callPackage = _path: _args: {
          name = "modelgate-from-flake";
          outPath = "/nix/store/00000000000000000000000000000000-modelgate-from-flake";
          meta.mainProgram = "modelgate";
        };
        pkgsStatic = nixos.pkgs;
        nixfmt = {
          name = "nixfmt";
          outPath = "/nix/store/00000000000000000000000000000000-nixfmt";
        };
      }
    );
  };
  flake = (import ../../flake.nix).outputs {
    self = flake // {
      outPath = toString ../..;
    };
    nixpkgs = fakeNixpkgs;
  };
  flakeChecks = flake.checks.x86_64-linux;
  # The eval-* checks on the stub: they must evaluate to their trivial derivations.
  evalChecksPass = b.all (n: (flakeChecks.${n}).name == "modelgate-${n}") [
    "eval-minimal"
    "eval-full"
    "eval-docker"
    "eval-invalid-name"
  ];
  # The flake's module, through the stub module system with the fake pkgs.
  viaFlake = evalSystem [
    flake.nixosModules.default
    {
      services.modelgate = {
        enable = true;
        settings.models.gpt.url = "https://api.openai.com";
      };
    }
  ];

  # The VM test's machine (and its specialisation), on the stub: it uses options that exist,
  # with values of their types, and no assertion fails.
  vmMachine = (import ./vm.nix { modelgateModule = ../module.nix; }).nodes.machine;
  vm = evalSystem [ vmMachine ];
  vmSpecialised = evalSystem [
    vmMachine
    vm.specialisation.more-models.configuration
  ];

  # The settings the module rendered: what the fake `formats.json.generate` was given, reached
  # through the runCommand that checks it.
  renderedSettings = out: out.environment.etc."modelgate/config.json".source.env.renderedConfig.value;
  basicJson = renderedSettings basic;
  workersJson = renderedSettings workers;

  checks = {
    # -- the router
    "Type=notify" = sc.Type == "notify";
    "ExecReload sends SIGHUP to the main PID" = b.match ".*kill -HUP \\$MAINPID" sc.ExecReload != null;
    "Restart=on-failure" = sc.Restart == "on-failure";
    "ExecStart runs the package on /etc/modelgate/config.json" =
      sc.ExecStart == "/nix/store/00000000000000000000000000000000-modelgate/bin/modelgate --config /etc/modelgate/config.json";
    "every hardening setting of issue 7" = b.all (k: (sc.${k} or null) == hardening.${k}) (b.attrNames hardening);
    "one socket unit per listen entry" =
      b.attrNames basic.systemd.sockets == [
        "modelgate-listen-0"
        "modelgate-listen-1"
        "modelgate-listen-2"
      ];
    "TCP socket on the given address" = basic.systemd.sockets.modelgate-listen-0.listenStreams == [ "127.0.0.1:8080" ];
    "':9090' is every IPv4 interface" = basic.systemd.sockets.modelgate-listen-2.listenStreams == [ "0.0.0.0:9090" ];
    "unix socket path, group and mode" =
      let
        s = basic.systemd.sockets.modelgate-listen-1;
      in
      s.listenStreams == [ "/run/modelgate/api.sock" ]
      && s.socketConfig.SocketGroup == "nginx"
      && s.socketConfig.SocketMode == "0660"
      && s.socketConfig.Service == "modelgate.service";
    "TCP sockets carry no unix ownership settings" = !(basic.systemd.sockets.modelgate-listen-0.socketConfig ? SocketMode);
    "the service takes all its sockets" =
      sc.Sockets == [
        "modelgate-listen-0.socket"
        "modelgate-listen-1.socket"
        "modelgate-listen-2.socket"
      ]
      && svc.requires == sc.Sockets;
    "LoadCredential for a plain credential" = sc.LoadCredential == [ "openai-key:/run/secrets/openai-key" ];
    "LoadCredentialEncrypted for an encrypted one" =
      sc.LoadCredentialEncrypted == [ "client-token:/etc/credstore.encrypted/client-token" ];
    "EnvironmentFile" = sc.EnvironmentFile == "/run/secrets/modelgate.env";
    "TimeoutStopSec covers timeouts.shutdown" = sc.TimeoutStopSec == "15s";
    "firewall opens only non-loopback TCP ports" = basic.networking.firewall.allowedTCPPorts == [ 9090 ];
    "config-only changes reload" = svc.reloadTriggers == [ rendered ];
    "the config is validated with modelgate --check at build time" =
      b.match ".*modelgate --check --config config.json.*" rendered.script != null
      && rendered.env.nativeBuildInputs == [ basic.services.modelgate.package ];
    "rendered listen = the socket addresses" =
      basicJson.listen == [
        "127.0.0.1:8080"
        "unix:/run/modelgate/api.sock"
        ":9090"
      ];
    "rendered config keeps secrets as references" =
      basicJson.models.gpt.headers.Authorization == "Bearer \${cred:openai-key}"
      && basicJson.authTokens == [ "\${cred:client-token}" ];
    "no failed assertion and no warning on a good config" =
      failedAssertions basic == [ ] && basic._toplevel.warnings == [ ];
    "the listen docs say a changed address needs a socket restart" =
      contains "needs a socket restart" basic._options.services.modelgate.listen.description;

    # -- workers
    "llama.cpp worker unit is hardened and DynamicUser" =
      qwenSc.DynamicUser && qwenSc.ProtectSystem == "strict" && qwenSc.NoNewPrivileges && qwenSc.CapabilityBoundingSet == "";
    "llama.cpp flags rendered from settings" =
      contains "llama-server' '--model' '/var/lib/models/qwen.gguf' '--alias' 'qwen' '--host' '127.0.0.1' '--port' '8101' " (
        execStart workers "modelgate-llama-cpp-qwen"
      )
      && !(contains "no-webui" (execStart workers "modelgate-llama-cpp-qwen"))
      && contains "'--lora' '/m/a.gguf' '--lora' '/m/b.gguf'" (execStart workers "modelgate-llama-cpp-qwen");
    "llama.cpp --flash-attn takes on|off|auto (true -> on, a string as is)" =
      contains "'--flash-attn' 'on'" (execStart workers "modelgate-llama-cpp-qwen")
      && contains "'--flash-attn' 'auto'" (execStart workers "modelgate-llama-cpp-small")
      && !(contains "'--flash-attn' '--" (execStart workers "modelgate-llama-cpp-qwen"));
    "shared per-kind defaults reach every model; the model wins a clash" =
      contains "'--n-gpu-layers' '99'" (execStart workers "modelgate-llama-cpp-qwen")
      && contains "'--n-gpu-layers' '99'" (execStart workers "modelgate-llama-cpp-small")
      && contains "'--ctx-size' '8192'" (execStart workers "modelgate-llama-cpp-qwen")
      && !(contains "'4096'" (execStart workers "modelgate-llama-cpp-qwen"))
      && contains "'--ctx-size' '4096'" (execStart workers "modelgate-llama-cpp-small")
      && wsvc.modelgate-llama-cpp-qwen.environment.GGML_SHARED == "1"
      && wsvc.modelgate-llama-cpp-small.environment.GGML_SHARED == "1"
      && b.elem "--gpu-memory-utilization" containers.modelgate-vllm-big.cmd
      && b.elem "--gpu-memory-utilization" containers.modelgate-vllm-pinned.cmd
      && containers.modelgate-vllm-big.environmentFiles == [
        "/run/secrets/hf.env"
        "/run/secrets/big.env"
      ]
      && containers.modelgate-vllm-pinned.environmentFiles == [ "/run/secrets/hf.env" ];
    "GPU worker: LimitMEMLOCK=infinity, nvidia-caps and the other GPU devices, no MDWE" =
      qwenSc.LimitMEMLOCK == "infinity"
      && qwenSc.PrivateDevices == false
      && qwenSc.DevicePolicy == "closed"
      && b.all (d: b.elem d qwenSc.DeviceAllow) [
        "char-nvidiactl rw"
        "char-nvidia-caps rw"
        "char-nvidia-frontend rw"
        "char-nvidia-uvm rw"
        "char-drm rw"
        "char-kfd rw"
      ]
      && qwenSc.MemoryDenyWriteExecute == false;
    "a model can opt out of the kind's gpu default" =
      smallSc.PrivateDevices == true && !(smallSc ? DeviceAllow) && !(smallSc ? LimitMEMLOCK) && smallSc.MemoryDenyWriteExecute;
    "llama.cpp may bind only its own port" = qwenSc.SocketBindAllow == [ "tcp:8101" ] && qwenSc.SocketBindDeny == "any";
    "llama.cpp on a unix socket" =
      contains "'--host' '/run/modelgate-llama-cpp-small/http.sock'" (execStart workers "modelgate-llama-cpp-small")
      && smallSc.RuntimeDirectory == "modelgate-llama-cpp-small";
    "a disabled worker has no unit and no route" = !(wsvc ? modelgate-llama-cpp-off) && !(workersJson.models ? off);
    "readiness: ExecStartPost runs modelgate wait-ready on the health URL (no curl)" =
      b.head qwenSc.ExecStartPost
      == "'/nix/store/00000000000000000000000000000000-modelgate/bin/modelgate' 'wait-ready' 'http://127.0.0.1:8101/health'"
      && b.head smallSc.ExecStartPost
        == "'/nix/store/00000000000000000000000000000000-modelgate/bin/modelgate' 'wait-ready' 'unix:///run/modelgate-llama-cpp-small/http.sock' '--path' '/health'"
      && !(contains "curl" (b.head qwenSc.ExecStartPost));
    "workers registered as routes" =
      workersJson.models.qwen.url == "http://127.0.0.1:8101"
      && workersJson.models."org/small".url == "unix:///run/modelgate-llama-cpp-small/http.sock"
      && workersJson.models.big.url == "http://127.0.0.1:8102"
      && workersJson.models.fast.url == "http://127.0.0.1:8103"
      && workersJson.models.gpt.url == "https://api.openai.com";
    "modelgate starts after its workers answer" =
      b.all (u: b.elem u wsvc.modelgate.after && b.elem u wsvc.modelgate.wants) [
        "modelgate-llama-cpp-qwen.service"
        "modelgate-llama-cpp-small.service"
        "podman-modelgate-vllm-big.service"
        "podman-modelgate-vllm-pinned.service"
        "podman-modelgate-sglang-fast.service"
      ];
    "sequential start: each worker after the previous one" =
      wsvc.modelgate-llama-cpp-qwen.after == [ "network.target" ]
      && wsvc.modelgate-llama-cpp-small.after == [
        "network.target"
        "modelgate-llama-cpp-qwen.service"
      ]
      && b.elem "modelgate-llama-cpp-small.service" wsvc.podman-modelgate-vllm-big.after
      && b.elem "podman-modelgate-vllm-big.service" wsvc.podman-modelgate-vllm-pinned.after
      && b.elem "podman-modelgate-vllm-pinned.service" wsvc.podman-modelgate-sglang-fast.after
      # oci-containers' own ordering is kept (the lists merge).
      && b.elem "network-online.target" wsvc.podman-modelgate-vllm-big.after;
    "sequentialStart = false starts them in parallel" =
      parallel.systemd.services.modelgate-llama-cpp-small.after == [ "network.target" ]
      && !(b.any (lib.hasPrefix "modelgate-") parallel.systemd.services.podman-modelgate-vllm-big.after);
    "containers on loopback with GPUs, memlock and --ipc=host" =
      containers.modelgate-vllm-big.ports == [ "127.0.0.1:8102:8000" ]
      && b.elem "--device=nvidia.com/gpu=all" containers.modelgate-vllm-big.extraOptions
      && b.elem "--ulimit=memlock=-1:-1" containers.modelgate-vllm-big.extraOptions
      && b.elem "--ipc=host" containers.modelgate-vllm-big.extraOptions
      && containers.modelgate-vllm-pinned.extraOptions == [ "--ipc=host" ]
      && b.elem "--served-model-name" containers.modelgate-vllm-big.cmd
      && b.elem "--max-model-len" containers.modelgate-vllm-big.cmd
      && b.head containers.modelgate-sglang-fast.cmd == "python3";
    "image pinned by tag, or by digest with pull=missing; a tag refreshes (podman: newer)" =
      containers.modelgate-vllm-big.image == "docker.io/vllm/vllm-openai:v0.10.2"
      && containers.modelgate-vllm-big.pull == "newer"
      && containers.modelgate-vllm-pinned.image == "docker.io/vllm/vllm-openai:v0.10.2@${digest}"
      && containers.modelgate-vllm-pinned.pull == "missing"
      && containers.modelgate-sglang-fast.image == "docker.io/lmsysorg/sglang:latest"
      && contains "--pull 'newer'" wsvc.podman-modelgate-vllm-big.script
      && contains "docker.io/vllm/vllm-openai:v0.10.2@${digest}" wsvc.podman-modelgate-vllm-pinned.script;
    "a digest that is not sha256:<64 hex> is a type error" = fails (
      (eval (workersConfig // { vllm.models.pinned = workersConfig.vllm.models.pinned // { imageDigest = "latest"; }; })).virtualisation.oci-containers.containers.modelgate-vllm-pinned.image
    );
    "container units: readiness probe, TimeoutStartSec overrides oci-containers' 0 (mkForce)" =
      contains "'wait-ready' 'http://127.0.0.1:8102/health'" (b.head wsvc.podman-modelgate-vllm-big.serviceConfig.ExecStartPost)
      && wsvc.podman-modelgate-vllm-big.serviceConfig.TimeoutStartSec == "30min"
      && wsvc.podman-modelgate-vllm-big.serviceConfig.Type == "notify";
    "podman host: the module leaves the backend to oci-containers (podman enabled by it)" =
      workers.virtualisation.oci-containers.backend == "podman"
      && workers.virtualisation.podman.enable
      && !workers.virtualisation.docker.enable;
    "GPU warning without the NVIDIA container toolkit" = b.length workers.warnings == 1;
    "no failed assertion with workers" = failedAssertions workers == [ ] && !(fails workers._toplevel);

    # -- Docker hosts
    "docker host: no conflict, docker-* units, docker enabled, podman not" =
      docker.virtualisation.oci-containers.backend == "docker"
      && docker.systemd.services ? docker-modelgate-vllm-big
      && !(docker.systemd.services ? podman-modelgate-vllm-big)
      && docker.virtualisation.docker.enable
      && !docker.virtualisation.podman.enable
      && failedAssertions docker == [ ]
      && !(fails docker._toplevel);
    "docker host: probes, timeouts, ordering on the docker-* units" =
      contains "http://127.0.0.1:8102/health" (b.head docker.systemd.services.docker-modelgate-vllm-big.serviceConfig.ExecStartPost)
      && docker.systemd.services.docker-modelgate-vllm-big.serviceConfig.TimeoutStartSec == "30min"
      && b.elem "docker-modelgate-sglang-fast.service" docker.systemd.services.modelgate.after
      && b.elem "docker-modelgate-vllm-pinned.service" docker.systemd.services.docker-modelgate-sglang-fast.after
      && b.elem "docker.service" docker.systemd.services.docker-modelgate-vllm-big.after;
    "docker host: a tag refreshes with pull=always (docker has no newer), a digest with missing" =
      docker.virtualisation.oci-containers.containers.modelgate-vllm-big.pull == "always"
      && docker.virtualisation.oci-containers.containers.modelgate-vllm-pinned.pull == "missing"
      && contains "exec docker " docker.systemd.services.docker-modelgate-vllm-big.script;
    "docker host: pull = newer is refused by an assertion" = b.any (
      contains "pull = \"newer\" needs the Podman backend"
    ) (failedAssertions dockerNewer);
    "pre-22.05 host: oci-containers' default (docker) is followed" =
      oldHost.virtualisation.oci-containers.backend == "docker" && oldHost.systemd.services ? docker-modelgate-vllm-big;
    "stub control: two plain backend definitions conflict" = fails backendConflict.virtualisation.oci-containers.backend;
    "stub control: an mkDefault backend yields to the host's" =
      backendMkDefault.virtualisation.oci-containers.backend == "docker";

    # -- assertions
    "assertion: port used twice" = hasMsg "port.*used twice.*8101";
    "assertion: model name defined twice" = hasMsg "model name.*defined twice.*qwen";
    "assertion: port and unixSocket both set" = hasMsg "both.*exactly one of port and unixSocket";
    "assertion: unit-unsafe worker names" =
      b.any (contains "\"bad/name\": the attribute name becomes a unit name") invalidMsgs
      && b.any (contains "\"bad name\": the attribute name becomes a unit name") invalidMsgs
      && b.length invalidMsgs == 2;
    "unit-unsafe names reach no unit, after= or wants=" =
      !(b.any (contains "bad") (b.attrNames invalidName.systemd.services))
      && !(b.any (contains "bad") (invalidName.systemd.services.modelgate.after ++ invalidName.systemd.services.modelgate.wants))
      && !(invalidName.virtualisation.oci-containers.containers ? "modelgate-vllm-bad/name")
      && invalidName.systemd.services ? modelgate-llama-cpp-good;
    "stub control: a bad unit name in after= is a type error" = fails badAfter._toplevel;

    "enable = false produces nothing" =
      disabled.systemd.services == { }
      && disabled.systemd.sockets == { }
      && disabled.environment.etc == { }
      && disabled.assertions == [ ]
      && disabled.virtualisation.oci-containers.containers == { };

    # -- flake.nix
    "flake: packages, apps (with meta), formatter nixfmt, on pkgs without aliases" =
      flake.packages.x86_64-linux.modelgate.name == "modelgate-from-flake"
      && flake.apps.aarch64-linux.default.program == "/nix/store/00000000000000000000000000000000-modelgate-from-flake/bin/modelgate"
      && b.isString flake.apps.x86_64-linux.default.meta.description
      && flake.formatter.x86_64-linux.name == "nixfmt";
    "flake: nixosModules.default sets the package without pkgs.system" =
      viaFlake.services.modelgate.package.name == "modelgate-from-flake" && !(fails viaFlake._toplevel);
    "flake: the eval-* checks evaluate (on the stub)" = evalChecksPass;

    # -- the VM test's configuration
    "vm test: the machine and its specialisation evaluate, no failed assertion" =
      !(fails vm._toplevel)
      && failedAssertions vm == [ ]
      && !(fails vmSpecialised._toplevel)
      && (renderedSettings vmSpecialised).models ? added;
    "vm test: two stand-in llama.cpp workers, the second after the first" =
      b.elem "modelgate-llama-cpp-first.service" vm.systemd.services.modelgate-llama-cpp-second.after
      && contains "fake-llama-cpp/bin/llama-server" (execStart vm "modelgate-llama-cpp-first")
      && contains "'--flash-attn' 'on'" (execStart vm "modelgate-llama-cpp-second");
  };

  # A check that throws counts as failed (nix-check.sh then shows its error).
  results = b.mapAttrs (
    _: c:
    let
      r = b.tryEval c;
    in
    r.success && r.value == true
  ) checks;
  failed = b.filter (n: !results.${n}) (b.attrNames checks);
in
{
  inherit
    checks
    results
    collideMsgs
    invalidMsgs
    ;
  # For scripts/nix-check.sh: each must fail, with the message it expects.
  failures = {
    invalidName = invalidName._toplevel;
    badAfter = badAfter._toplevel;
    backendConflict = backendConflict.virtualisation.oci-containers.backend;
    dockerNewer = dockerNewer._toplevel;
  };
  summary =
    if failed == [ ] then
      "stub module system: ${toString (b.length (b.attrNames checks))} checks passed"
    else
      b.throw "stub module system: FAILED: ${b.concatStringsSep "; " failed}";
}
