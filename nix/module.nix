# NixOS module: services.modelgate, plus optional local inference workers (llama.cpp natively,
# vLLM and SGLang as OCI containers on the host's Podman or Docker) that are registered as
# modelgate routes.
#
# Design:
#   - modelgate binds nothing itself: every `listen` entry becomes a systemd socket unit whose
#     socket is passed in (LISTEN_FDS), so the service can run with SocketBindDeny=any and
#     no capabilities even for port 80/443.
#   - the config is rendered from `settings` into the store and validated at build time with
#     `modelgate --check` (which reads no secret); secrets are only references
#     (${cred:NAME} for `credentials`, ${env:NAME} for `environmentFile`, ${file:PATH}).
#   - /etc/modelgate/config.json points at the store file and `reloadTriggers` make
#     `nixos-rebuild switch` reload (SIGHUP) instead of restarting when only the config changed.
#   - a worker's unit is active only once it answers its health endpoint (ExecStartPost runs
#     `modelgate wait-ready`); modelgate is ordered after its workers, so its routes go live when they answer,
#     and (sequentialStart) each worker after the previous one, so two models never race for
#     GPU memory at boot.
#   - nothing a worker's attribute name could break reaches a unit name: such a worker only
#     fails its assertion (see unitSafe).
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    mkOption
    mkEnableOption
    mkIf
    mkMerge
    types
    ;

  cfg = config.services.modelgate;
  settingsFormat = pkgs.formats.json { };

  # ---- listen entries ---------------------------------------------------------------------
  # modelgate's address forms (docs/CONFIG.md) -> systemd ListenStream= values.
  unixPath =
    address:
    let
      rest = lib.removePrefix "unix:" address;
    in
    if lib.hasPrefix "///" rest then lib.removePrefix "//" rest else rest;
  isUnix = address: lib.hasPrefix "unix:" address;
  tcpParts =
    address:
    let
      m = builtins.match "(.*):([0-9]+)" address;
    in
    if m == null then
      null
    else
      {
        host = builtins.elemAt m 0;
        port = lib.toInt (builtins.elemAt m 1);
      };
  listenStream =
    address:
    if isUnix address then
      unixPath address
    else
      let
        p = tcpParts address;
      in
      # ":8080" means every IPv4 interface to modelgate; say so to systemd too (a bare port
      # would be a dual-stack IPv6 socket).
      if p.host == "" then
        "0.0.0.0:${toString p.port}"
      else if p.host == "localhost" then
        "127.0.0.1:${toString p.port}"
      else
        address;
  isLoopback =
    host:
    lib.hasPrefix "127." host
    || builtins.elem host [
      "localhost"
      "[::1]"
    ];

  listenEntry = types.submodule {
    options = {
      address = mkOption {
        type = types.str;
        example = "unix:/run/modelgate/api.sock";
        description = ''
          A modelgate listen address: `":8080"` (every IPv4 interface), `"127.0.0.1:8080"`,
          `"[::1]:8080"`, `"[::]:8080"` or `"unix:/abs/path.sock"`. It becomes a systemd socket
          unit whose socket modelgate receives by socket activation.
        '';
      };
      user = mkOption {
        type = types.str;
        default = "root";
        description = "Owner of a unix socket (systemd `SocketUser=`). Ignored for TCP.";
      };
      group = mkOption {
        type = types.str;
        default = "root";
        description = ''
          Group of a unix socket (systemd `SocketGroup=`); give it to the clients that may
          connect (e.g. `"nginx"`). Ignored for TCP.
        '';
      };
      mode = mkOption {
        type = types.str;
        default = "0660";
        description = "Permissions of a unix socket (systemd `SocketMode=`). Ignored for TCP.";
      };
    };
  };
  socketName = i: "modelgate-listen-${toString i}";
  indexedListen = lib.imap0 (i: e: e // { unit = socketName i; }) cfg.listen;

  # ---- credentials ------------------------------------------------------------------------
  credentialEntry = types.submodule {
    options = {
      path = mkOption {
        type = types.str;
        description = ''
          File (or `AF_UNIX` socket) systemd reads the credential from, outside the store.
        '';
      };
      encrypted = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Whether `path` was made with `systemd-creds encrypt` (then `LoadCredentialEncrypted=`
          is used; decrypted by systemd with the host key or TPM2).
        '';
      };
    };
  };
  credList = lib.mapAttrsToList (name: c: c // { inherit name; }) cfg.credentials;

  # ---- inference workers ------------------------------------------------------------------
  flagValue = types.oneOf [
    types.bool
    types.int
    types.float
    types.str
    (types.listOf (
      types.oneOf [
        types.int
        types.float
        types.str
      ]
    ))
  ];
  # llama.cpp flags that take on|off|auto rather than being bare switches (current
  # llama-server rejects a bare `--flash-attn`): `true` renders as `on`, `false` as `off`.
  llamaCppOnOffFlags = [ "flash-attn" ];
  # { ctx-size = 8192; no-webui = true; lora = [ a b ]; } -> [ "--ctx-size" "8192" "--no-webui" "--lora" a "--lora" b ]
  # `onOff` lists the flags whose booleans become an explicit on/off value.
  renderFlags =
    onOff: settings:
    lib.concatLists (
      lib.mapAttrsToList (
        k: v:
        if builtins.elem k onOff && builtins.isBool v then
          [
            "--${k}"
            (if v then "on" else "off")
          ]
        else if v == true then
          [ "--${k}" ]
        else if v == false || v == null then
          [ ]
        else if builtins.isList v then
          lib.concatMap (x: [
            "--${k}"
            (toString x)
          ]) v
        else
          [
            "--${k}"
            (toString v)
          ]
      ) settings
    );

  # Options a worker shares with its kind's `defaults`. With `isDefaults` they are the
  # declarations of `services.modelgate.<kind>.defaults` (built-in defaults); otherwise a
  # model's own, whose scalar defaults are the kind's `defaults` (so ten models on one image
  # or one llama.cpp build say it once). Maps and lists are merged instead: see `everyWorker`.
  sharedWorkerOptions =
    {
      kind,
      container,
      isDefaults ? false,
      defaults ? { },
    }:
    let
      kindPath = "services.modelgate.${kind}.defaults";
      # A scalar option: the built-in default in `defaults`, the kind's default in a model.
      inherited =
        name: builtinDefault: attrs:
        mkOption (
          removeAttrs attrs [ "builtinText" ]
          // (
            if isDefaults then
              { default = builtinDefault; }
              // lib.optionalAttrs (attrs ? builtinText) { defaultText = attrs.builtinText; }
            else
              {
                default = defaults.${name};
                defaultText = lib.literalExpression "config.${kindPath}.${name}";
              }
          )
        );
      mergedNote =
        what:
        if isDefaults then
          "Shared by every ${kind} model; a model's own ${what} are added to these (the model wins on a clash)."
        else
          "Added to `${kindPath}.${what}`; the model's value wins on a clash.";
    in
    {
      settings = mkOption {
        type = types.attrsOf flagValue;
        default = { };
        example =
          if kind == "llama-cpp" then
            {
              ctx-size = 8192;
              n-gpu-layers = 99;
              flash-attn = true;
            }
          else
            {
              max-model-len = 32768;
              gpu-memory-utilization = 0.9;
            };
        description = ''
          Command-line flags: `name = value` becomes `--name value`, `true` becomes `--name`,
          `false` omits it, a list repeats the flag.${
            lib.optionalString (kind == "llama-cpp") " `flash-attn` takes `\"on\"`, `\"off\"` or `\"auto\"`; `true`/`false` render as `on`/`off`."
          } ${mergedNote "settings"}
        '';
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = ''
          Arguments appended verbatim after the rendered `settings`.${
            lib.optionalString (!isDefaults) " Come after `${kindPath}.extraArgs`."
          }
        '';
      };
      environment = mkOption {
        type = types.attrsOf types.str;
        default = { };
        description = "Environment variables (no secrets: they land in the store). ${mergedNote "environment"}";
      };
      environmentFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/hf-token.env";
        description = ''
          A file of `NAME=value` lines (e.g. `HF_TOKEN=...`), kept out of the store.${
            if isDefaults then
              " Loaded for every ${kind} model, before the model's own."
            else
              " Loaded after `${kindPath}.environmentFile`, so its lines win."
          }
        '';
      };
      healthPath = inherited "healthPath" "/health" {
        type = types.str;
        description = ''
          Path polled until it answers 2xx before the worker's unit counts as started (and
          modelgate, ordered after it, starts routing to it).
        '';
      };
      startTimeout = inherited "startTimeout" (if container then "30min" else "15min") {
        type = types.str;
        description = "How long loading the model may take (systemd `TimeoutStartSec=`).";
      };
    }
    // lib.optionalAttrs (!container) {
      package = inherited "package" pkgs.llama-cpp {
        type = types.package;
        builtinText = lib.literalExpression "pkgs.llama-cpp";
        example = lib.literalExpression "pkgs.llama-cpp.override { cudaSupport = true; }";
        description = "The llama.cpp build providing `llama-server`.";
      };
      gpu = inherited "gpu" false {
        type = types.bool;
        description = ''
          Give the worker the GPU device nodes (NVIDIA incl. `nvidia-caps`, DRM, KFD) instead
          of `PrivateDevices=true`, `LimitMEMLOCK=infinity` (CUDA page-locks host buffers)
          and no `MemoryDenyWriteExecute`; needed by CUDA, ROCm and Vulkan builds.
        '';
      };
    }
    // lib.optionalAttrs container {
      image = inherited "image" "docker.io/${
        if kind == "vllm" then "vllm/vllm-openai" else "lmsysorg/sglang"
      }:latest" {
        type = types.str;
        example = "docker.io/vllm/vllm-openai:v0.10.2";
        description = ''
          OCI image reference. Pin a tag here (and `imageDigest` for an immutable pin) for
          reproducible deployments.
        '';
      };
      imageDigest = inherited "imageDigest" null {
        type = types.nullOr (types.strMatching "sha256:[0-9a-f]{64}");
        example = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        description = ''
          Pins the image by content: `image@DIGEST` is run (a tag in `image` is then only a
          label). With a digest the default `pull` is `missing`.
        '';
      };
      pull = inherited "pull" null {
        type = types.nullOr (
          types.enum [
            "always"
            "missing"
            "newer"
            "never"
          ]
        );
        description = ''
          Image pull policy at every (re)start of the container unit. `null` chooses:
          `missing` for a digest pin, otherwise `newer` with Podman and `always` with Docker
          (Docker has no `newer`), so a moving tag is refreshed by `systemctl restart`.
        '';
      };
      devices = inherited "devices" [ "nvidia.com/gpu=all" ] {
        type = types.listOf types.str;
        description = ''
          Devices passed to the engine (`--device`). The default CDI name needs
          `hardware.nvidia-container-toolkit.enable = true` (Docker 25 or newer with CDI,
          which that option turns on); use `/dev/kfd` and `/dev/dri` for ROCm images, `[ ]`
          for none. With any device the container also gets `--ulimit=memlock=-1:-1`.
        '';
      };
      cacheDir = inherited "cacheDir" "/var/cache/modelgate-${kind}" {
        type = types.str;
        description = "Host directory mounted as the container's Hugging Face cache.";
      };
      extraOptions = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = ''
          Extra `podman run` / `docker run` options.${
            lib.optionalString (!isDefaults) " Come after `${kindPath}.extraOptions`."
          }
        '';
      };
    };

  workerOptions =
    { kind, container }:
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = "Whether to run this worker and route to it.";
        };
        routeName = mkOption {
          type = types.str;
          default = name;
          defaultText = lib.literalExpression "<name>";
          description = ''
            The model name clients send (`"model"` in the body) and modelgate routes on. May
            contain `/` (Hugging Face names); the attribute name is used for the unit name.
          '';
        };
        model = mkOption {
          type = types.str;
          example = if kind == "llama-cpp" then "/var/lib/models/qwen3-8b-q4_k_m.gguf" else "Qwen/Qwen3-8B";
          description =
            if kind == "llama-cpp" then
              "Path to the GGUF file (`--model`), readable by the service (not in a home directory)."
            else
              "Model to serve: a Hugging Face repository id or a path inside the container.";
        };
        port = mkOption {
          type = types.nullOr types.port;
          default = null;
          example = 8101;
          description = ''
            Loopback TCP port the worker listens on (`127.0.0.1:PORT`). Exactly one of `port`
            and `unixSocket` must be set.
          '';
        };
        unixSocket = mkOption {
          type = types.bool;
          default = false;
          description =
            if container then
              "Unix sockets are not offered for container workers; use `port`."
            else
              ''
                Listen on `/run/modelgate-${kind}-<name>/http.sock` instead of a TCP port.
              '';
        };
        route = mkOption {
          type = settingsFormat.type;
          default = { };
          example = {
            unlisted = true;
          };
          description = ''
            Extra keys of the modelgate model entry for this worker (`headers`, `unlisted`);
            `url` is set by the module.
          '';
        };
      }
      // sharedWorkerOptions {
        inherit kind container;
        defaults = cfg.${kind}.defaults;
      };
    };

  workerType = args: types.submodule (workerOptions args);

  # Only names that are safe inside a unit name make units; the others fail the assertion
  # below, and are kept out of every unit, `after=` and `wants=` so that this assertion (and
  # not a type error of a unit-name list elsewhere in NixOS) is what the admin reads.
  unitSafe = name: builtins.match "[A-Za-z0-9_.-]+" name != null;
  backend = config.virtualisation.oci-containers.backend;
  enabledWorkers = kind: lib.filterAttrs (_: w: w.enable) cfg.${kind}.models;
  # Every enabled worker as one flat list, in start order (llama.cpp, vLLM, SGLang; by name
  # within a kind): { kind, name, unit, url, ... } with the kind's defaults merged in.
  everyWorker = lib.concatMap (
    kind:
    lib.mapAttrsToList (
      name: w:
      let
        defaults = cfg.${kind}.defaults;
        container = kind != "llama-cpp";
        socketPath = "/run/modelgate-${kind}-${name}/http.sock";
        useSocket = !container && w.unixSocket;
        containerName = "modelgate-${kind}-${name}";
      in
      w
      // {
        inherit
          kind
          name
          container
          containerName
          socketPath
          useSocket
          ;
        settings = defaults.settings // w.settings;
        extraArgs = defaults.extraArgs ++ w.extraArgs;
        environment = defaults.environment // w.environment;
        environmentFiles = lib.filter (f: f != null) [
          defaults.environmentFile
          w.environmentFile
        ];
        # What oci-containers names a container's unit (its serviceName default).
        unit = if container then "${backend}-${containerName}" else "modelgate-${kind}-${name}";
        url = if useSocket then "unix://${socketPath}" else "http://127.0.0.1:${toString w.port}";
      }
      // lib.optionalAttrs container {
        extraOptions = defaults.extraOptions ++ w.extraOptions;
        imageRef = if w.imageDigest == null then w.image else "${w.image}@${w.imageDigest}";
        pullPolicy =
          if w.pull != null then
            w.pull
          else if w.imageDigest != null then
            "missing"
          else if backend == "podman" then
            "newer"
          else
            "always";
      }
    ) (enabledWorkers kind)
  ) workerKinds;
  allWorkers = lib.filter (w: unitSafe w.name) everyWorker;
  workerKinds = [
    "llama-cpp"
    "vllm"
    "sglang"
  ];
  # With sequentialStart, each worker's unit starts after the one before it in allWorkers
  # has started (answered its health check) or failed.
  previousUnit = lib.listToAttrs (
    lib.imap0 (i: w: lib.nameValuePair w.unit (if i == 0 then null else (builtins.elemAt allWorkers (i - 1)).unit)) allWorkers
  );
  startAfterPrevious =
    w: lib.optional (cfg.sequentialStart && previousUnit.${w.unit} != null) "${previousUnit.${w.unit}}.service";

  # A worker's unit counts as started once its ExecStartPost= exits: `modelgate wait-ready`
  # polls the health endpoint until it answers 2xx (systemd's TimeoutStartSec bounds it),
  # retrying refused connections and 503s while the model loads. No curl in the closure.
  readyCommand =
    w:
    lib.escapeShellArgs (
      [
        (lib.getExe cfg.package)
        "wait-ready"
      ]
      ++ (
        if w.useSocket then
          [
            "unix://${w.socketPath}"
            "--path"
            w.healthPath
          ]
        else
          [ "http://127.0.0.1:${toString w.port}${w.healthPath}" ]
      )
    );

  # ---- the rendered config -----------------------------------------------------------------
  workerRoutes = lib.listToAttrs (
    map (w: lib.nameValuePair w.routeName (w.route // { inherit (w) url; })) allWorkers
  );
  finalSettings = cfg.settings // {
    listen = map (e: e.address) cfg.listen;
    models = (cfg.settings.models or { }) // workerRoutes;
  };
  renderedConfig = settingsFormat.generate "modelgate-settings.json" finalSettings;
  # Validated at build time: a config modelgate rejects fails `nixos-rebuild`, not the boot.
  # --check reads no secret, so ${cred:...}/${env:...} references need not resolve here.
  configFile =
    pkgs.runCommand "modelgate-config.json"
      {
        nativeBuildInputs = [ cfg.package ];
        inherit renderedConfig;
        preferLocalBuild = true;
      }
      ''
        ln -s "$renderedConfig" config.json
        modelgate --check --config config.json
        cp "$renderedConfig" "$out"
      '';

  # ---- hardening -----------------------------------------------------------------------------
  # Shared by modelgate and the native workers; each adds or relaxes what it must.
  commonHardening = {
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
    # A denied call fails with EPERM instead of killing the process.
    SystemCallErrorNumber = "EPERM";
    RestrictAddressFamilies = [
      "AF_INET"
      "AF_INET6"
      "AF_UNIX"
    ];
    DevicePolicy = "closed";
  };

  hasContainers = lib.any (w: w.container) allWorkers;
  allPorts =
    map (e: (tcpParts e.address).port) (lib.filter (e: !(isUnix e.address)) cfg.listen)
    ++ map (w: w.port) (lib.filter (w: w.port != null) everyWorker);
  duplicates = list: lib.unique (lib.filter (x: lib.count (y: y == x) list > 1) list);
  userModelNames = builtins.attrNames (cfg.settings.models or { });
  routeNames = map (w: w.routeName) everyWorker;
in
{
  options.services.modelgate = {
    enable = mkEnableOption "modelgate, a router for OpenAI-compatible LLM APIs";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./nix/package.nix { } (this repository)";
      description = "The modelgate package.";
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = lib.literalExpression ''
        {
          authTokens = [ "''${cred:client-token}" ];
          models.gpt-4o = {
            url = "https://api.openai.com";
            headers.Authorization = "Bearer ''${cred:openai-key}";
          };
        }
      '';
      description = ''
        modelgate's config.json (docs/CONFIG.md) as Nix. It is written to the world-readable
        Nix store: put secrets in `credentials` (or `environmentFile`) and refer to them as
        `''${cred:NAME}` (or `''${env:NAME}`). `listen` is set from
        {option}`services.modelgate.listen`; routes of the inference workers are added to
        `models`.
      '';
    };

    listen = mkOption {
      type = types.listOf (types.coercedTo types.str (address: { inherit address; }) listenEntry);
      default = [ "127.0.0.1:8080" ];
      example = [
        ":8080"
        {
          address = "unix:/run/modelgate/api.sock";
          group = "nginx";
        }
      ];
      description = ''
        Where modelgate accepts connections. Each entry becomes a socket unit
        (`modelgate-listen-<i>.socket`) passed to the service; plain HTTP only (terminate TLS
        in front, or run modelgate without socket activation to use its TLS listeners).

        Changing an existing entry needs a socket restart: `nixos-rebuild switch` leaves
        changed socket units alone, so the old address keeps being served. Afterwards run
        `systemctl stop modelgate.service 'modelgate-listen-*.socket'` and then
        `systemctl start sockets.target modelgate.service` (a short refusal window).
      '';
    };

    credentials = mkOption {
      type = types.attrsOf (types.coercedTo types.str (path: { inherit path; }) credentialEntry);
      default = { };
      example = {
        openai-key = "/run/secrets/openai-key";
        client-token = {
          path = "/etc/credstore.encrypted/modelgate-client-token";
          encrypted = true;
        };
      };
      description = ''
        Secrets handed to the service with `LoadCredential=NAME:PATH` (or
        `LoadCredentialEncrypted=`), readable only by it under `$CREDENTIALS_DIRECTORY`.
        Refer to one in `settings` as `''${cred:NAME}`. Works with sops-nix/agenix paths.
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/modelgate.env";
      description = ''
        A file of `NAME=value` lines loaded into the service's environment (systemd
        `EnvironmentFile=`), for `''${env:NAME}` references. Prefer `credentials`.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the TCP ports of the non-loopback `listen` entries.";
    };

    waitForWorkers = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Order modelgate after its inference workers, whose units become active only when the
        worker answers its health check: routes go live when the workers answer. Set to
        `false` to start routing to the other models at once (worker routes answer 502 until
        the worker is up).
      '';
    };

    sequentialStart = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Start the inference workers one after another (llama.cpp, then vLLM, then SGLang;
        by attribute name within each): each unit is ordered after the previous one, which
        counts as started only once it answers its health check (or has failed). Two large
        models loading at once on one GPU each see all of its memory as free and race for
        it. Set to `false` when every worker has its own device, to start them in parallel.
      '';
    };

    llama-cpp.defaults = mkOption {
      type = types.submodule {
        options = sharedWorkerOptions {
          kind = "llama-cpp";
          container = false;
          isDefaults = true;
        };
      };
      default = { };
      example = lib.literalExpression ''
        {
          package = pkgs.llama-cpp.override { cudaSupport = true; };
          gpu = true;
          settings = { n-gpu-layers = 99; flash-attn = "auto"; parallel = 4; };
        }
      '';
      description = "Settings shared by every `llama-cpp.models` entry (each model may override them).";
    };

    vllm.defaults = mkOption {
      type = types.submodule {
        options = sharedWorkerOptions {
          kind = "vllm";
          container = true;
          isDefaults = true;
        };
      };
      default = { };
      description = "Settings shared by every `vllm.models` entry (each model may override them).";
    };

    sglang.defaults = mkOption {
      type = types.submodule {
        options = sharedWorkerOptions {
          kind = "sglang";
          container = true;
          isDefaults = true;
        };
      };
      default = { };
      description = "Settings shared by every `sglang.models` entry (each model may override them).";
    };

    llama-cpp.models = mkOption {
      type = types.attrsOf (workerType {
        kind = "llama-cpp";
        container = false;
      });
      default = { };
      example = lib.literalExpression ''
        {
          qwen3-8b = {
            model = "/var/lib/models/Qwen3-8B-Q4_K_M.gguf";
            port = 8101;
            settings = { ctx-size = 16384; parallel = 4; };
          };
        }
      '';
      description = "Native `llama-server` workers, one hardened DynamicUser unit per model.";
    };

    vllm.models = mkOption {
      type = types.attrsOf (workerType {
        kind = "vllm";
        container = true;
      });
      default = { };
      description = ''
        vLLM workers, one container per model with GPU access, run by
        `virtualisation.oci-containers` with whichever backend the host uses (Podman or
        Docker).
      '';
    };

    sglang.models = mkOption {
      type = types.attrsOf (workerType {
        kind = "sglang";
        container = true;
      });
      default = { };
      description = ''
        SGLang workers, one container per model with GPU access, run by
        `virtualisation.oci-containers` with whichever backend the host uses (Podman or
        Docker).
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = cfg.listen != [ ];
          message = "services.modelgate.listen must have at least one entry.";
        }
        {
          assertion = !(cfg.settings ? listen || cfg.settings ? host || cfg.settings ? port);
          message = "services.modelgate: set listen addresses with services.modelgate.listen, not settings.listen/host/port.";
        }
        {
          assertion = lib.all (
            e: if isUnix e.address then lib.hasPrefix "/" (unixPath e.address) else tcpParts e.address != null
          ) cfg.listen;
          message = "services.modelgate.listen: every entry must be HOST:PORT, :PORT or unix:/absolute/path (relative unix paths cannot be socket units).";
        }
        {
          assertion = duplicates allPorts == [ ];
          message = "services.modelgate: TCP port(s) used twice among listen entries and workers: ${
            lib.concatMapStringsSep ", " toString (duplicates allPorts)
          }.";
        }
        {
          assertion = duplicates (map (e: listenStream e.address) cfg.listen) == [ ];
          message = "services.modelgate.listen: the same address is listed twice.";
        }
        {
          assertion = duplicates (routeNames ++ userModelNames) == [ ];
          message = "services.modelgate: model name(s) defined twice (settings.models and workers' routeName): ${
            lib.concatStringsSep ", " (duplicates (routeNames ++ userModelNames))
          }.";
        }
        {
          assertion = finalSettings.models != { };
          message = "services.modelgate: no models: set settings.models or enable a worker.";
        }
      ]
      ++ map (w: {
        assertion = (w.port != null) != w.useSocket && !(w.container && w.unixSocket);
        message = "services.modelgate.${w.kind}.models.\"${w.name}\": set exactly one of port and unixSocket${
          lib.optionalString w.container " (containers: port only)"
        }.";
      }) everyWorker
      ++ map (w: {
        assertion = unitSafe w.name;
        message = "services.modelgate.${w.kind}.models.\"${w.name}\": the attribute name becomes a unit name: use letters, digits, '.', '_', '-' (put the real model name in routeName).";
      }) everyWorker
      ++ map (w: {
        assertion = w.pullPolicy != "newer" || backend == "podman";
        message = "services.modelgate.${w.kind}.models.\"${w.name}\": pull = \"newer\" needs the Podman backend (virtualisation.oci-containers.backend is \"${backend}\"); use \"always\".";
      }) (lib.filter (w: w.container) allWorkers);

      environment.etc."modelgate/config.json".source = configFile;

      systemd.sockets = lib.listToAttrs (
        map (
          e:
          lib.nameValuePair e.unit {
            description = "modelgate listener ${e.address}";
            # No PartOf=: stopping or restarting modelgate keeps its sockets (and their
            # queued connections); the next connection starts it again.
            wantedBy = [ "sockets.target" ];
            listenStreams = [ (listenStream e.address) ];
            socketConfig = {
              Service = "modelgate.service";
              Backlog = 1024;
            }
            // lib.optionalAttrs (isUnix e.address) {
              SocketUser = e.user;
              SocketGroup = e.group;
              SocketMode = e.mode;
              RemoveOnStop = true;
            };
          }
        ) indexedListen
      );

      systemd.services.modelgate = {
        description = "modelgate LLM API router";
        wantedBy = [ "multi-user.target" ];
        requires = map (e: "${e.unit}.socket") indexedListen;
        after = [
          "network-online.target"
        ]
        ++ map (e: "${e.unit}.socket") indexedListen
        ++ lib.optionals cfg.waitForWorkers (map (w: "${w.unit}.service") allWorkers);
        wants = [
          "network-online.target"
        ]
        ++ lib.optionals cfg.waitForWorkers (map (w: "${w.unit}.service") allWorkers);
        # A config-only change reloads (SIGHUP re-reads /etc/modelgate/config.json) instead of
        # dropping connections with a restart.
        reloadTriggers = [ configFile ];
        serviceConfig = commonHardening // {
          Type = "notify";
          NotifyAccess = "main";
          ExecStart = "${lib.getExe cfg.package} --config /etc/modelgate/config.json";
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          Restart = "on-failure";
          RestartSec = "2s";
          # timeouts.shutdown (default 30 s) of draining, plus a margin.
          TimeoutStopSec =
            let
              t = (cfg.settings.timeouts or { }).shutdown or 30;
            in
            "${toString (builtins.ceil (t + 5))}s";
          Sockets = map (e: "${e.unit}.socket") indexedListen;
          LoadCredential = map (c: "${c.name}:${c.path}") (lib.filter (c: !c.encrypted) credList);
          LoadCredentialEncrypted = map (c: "${c.name}:${c.path}") (lib.filter (c: c.encrypted) credList);
          # Sockets come from the socket units: modelgate itself binds nothing.
          SocketBindDeny = "any";
          SystemCallFilter = [
            "@system-service"
            "~@privileged"
            "~@resources"
          ];
          # Enough descriptors without setrlimit (which ~@resources denies).
          LimitNOFILE = 65536;
        }
        // lib.optionalAttrs (cfg.environmentFile != null) { EnvironmentFile = cfg.environmentFile; };
      };

      networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall (
        map (e: (tcpParts e.address).port) (
          lib.filter (e: !(isUnix e.address) && !(isLoopback (tcpParts e.address).host)) cfg.listen
        )
      );
    }

    # ---- native llama.cpp workers ----------------------------------------------------------
    {
      systemd.services = lib.listToAttrs (
        map (
          w:
          lib.nameValuePair w.unit {
            description = "llama.cpp worker for modelgate model ${w.routeName}";
            wantedBy = [ "multi-user.target" ];
            before = lib.optional cfg.waitForWorkers "modelgate.service";
            after = [ "network.target" ] ++ startAfterPrevious w;
            environment = {
              LLAMA_CACHE = "/var/cache/${w.unit}";
            }
            // w.environment;
            serviceConfig =
              commonHardening
              // {
                Type = "exec";
                ExecStart = lib.escapeShellArgs (
                  [
                    "${w.package}/bin/llama-server"
                    "--model"
                    w.model
                    "--alias"
                    w.routeName
                  ]
                  ++ (
                    if w.useSocket then
                      [
                        "--host"
                        w.socketPath
                      ]
                    else
                      [
                        "--host"
                        "127.0.0.1"
                        "--port"
                        (toString w.port)
                      ]
                  )
                  ++ renderFlags llamaCppOnOffFlags w.settings
                  ++ w.extraArgs
                );
                ExecStartPost = [ (readyCommand w) ];
                TimeoutStartSec = w.startTimeout;
                Restart = "on-failure";
                RestartSec = "5s";
                CacheDirectory = w.unit;
                StateDirectory = w.unit;
                WorkingDirectory = "/var/lib/${w.unit}";
                # llama.cpp binds its own port (it is not socket-activated); loopback only.
                SocketBindAllow = lib.optional (!w.useSocket) "tcp:${toString w.port}";
                SocketBindDeny = "any";
                # llama.cpp may set thread priorities and mlock (--prio, --mlock): no ~@resources.
                SystemCallFilter = [
                  "@system-service"
                  "~@privileged"
                ];
                # ggml reads /proc/cpuinfo and /proc/meminfo to size threads and buffers.
                ProcSubset = "all";
              }
              // lib.optionalAttrs w.useSocket {
                RuntimeDirectory = w.unit;
                RuntimeDirectoryMode = "0755";
                # The socket must be connectable by modelgate's (different) dynamic user; its
                # directory is the only thing in /run/<unit>, so this exposes what a loopback
                # port would.
                UMask = "0000";
              }
              // lib.optionalAttrs (w.gpu || (w.settings.mlock or false) == true) {
                # CUDA page-locks the host side of device buffers, and --mlock pins the
                # weights; both come out of RLIMIT_MEMLOCK (8 MiB by default), and
                # ~@resources is already off for this unit.
                LimitMEMLOCK = "infinity";
              }
              // lib.optionalAttrs w.gpu {
                PrivateDevices = false;
                DevicePolicy = "closed";
                # The device classes nixpkgs' ollama module allows: NVIDIA (nvidia-caps holds
                # the MIG/compute capability nodes), DRM (Vulkan, ROCm), KFD (ROCm compute).
                DeviceAllow = [
                  "char-nvidiactl rw"
                  "char-nvidia-caps rw"
                  "char-nvidia-frontend rw"
                  "char-nvidia-uvm rw"
                  "char-drm rw"
                  "char-kfd rw"
                ];
                # GPU drivers map executable memory (JIT-compiled kernels).
                MemoryDenyWriteExecute = false;
                SupplementaryGroups = [
                  "video"
                  "render"
                ];
              }
              // lib.optionalAttrs (w.environmentFiles != [ ]) { EnvironmentFile = w.environmentFiles; };
          }
        ) (lib.filter (w: w.kind == "llama-cpp") allWorkers)
      );
    }

    # ---- vLLM / SGLang containers ----------------------------------------------------------
    # Run by virtualisation.oci-containers with whichever backend the host chose (its default
    # is Podman from stateVersion 22.05 on, and it enables that engine itself): setting the
    # backend here would clash with, or silently switch, a Docker host's other containers.
    (mkIf hasContainers {
      virtualisation.oci-containers.containers = lib.listToAttrs (
        map (
          w:
          lib.nameValuePair w.containerName {
            image = w.imageRef;
            pull = w.pullPolicy;
            inherit (w) environment;
            autoStart = true;
            # The container listens on 8000 inside; published on loopback only.
            ports = [ "127.0.0.1:${toString w.port}:8000" ];
            volumes = [ "${w.cacheDir}:/root/.cache/huggingface" ];
            environmentFiles = w.environmentFiles;
            cmd =
              (
                if w.kind == "vllm" then
                  [
                    "--model"
                    w.model
                    "--served-model-name"
                    w.routeName
                    "--host"
                    "0.0.0.0"
                    "--port"
                    "8000"
                  ]
                else
                  [
                    "python3"
                    "-m"
                    "sglang.launch_server"
                    "--model-path"
                    w.model
                    "--served-model-name"
                    w.routeName
                    "--host"
                    "0.0.0.0"
                    "--port"
                    "8000"
                  ]
              )
              ++ renderFlags [ ] w.settings
              ++ w.extraArgs;
            extraOptions =
              map (d: "--device=${d}") w.devices
              # GPU runtimes page-lock host memory (NVIDIA's container guide sets this too).
              ++ lib.optional (w.devices != [ ]) "--ulimit=memlock=-1:-1"
              ++ [ "--ipc=host" ]
              ++ w.extraOptions;
          }
        ) (lib.filter (w: w.container) allWorkers)
      );
      systemd.services = lib.listToAttrs (
        map (
          w:
          lib.nameValuePair w.unit {
            before = lib.optional cfg.waitForWorkers "modelgate.service";
            after = startAfterPrevious w;
            serviceConfig = {
              ExecStartPost = [ (readyCommand w) ];
              # oci-containers sets 0 (no limit); loading a model is bounded instead.
              TimeoutStartSec = lib.mkForce w.startTimeout;
            };
          }
        ) (lib.filter (w: w.container) allWorkers)
      );
      systemd.tmpfiles.rules = lib.unique (
        map (w: "d ${w.cacheDir} 0700 root root -") (lib.filter (w: w.container) allWorkers)
      );
      warnings =
        lib.optional
          (
            lib.any (w: w.container && lib.any (lib.hasPrefix "nvidia.com/") w.devices) allWorkers
            && !(config.hardware.nvidia-container-toolkit.enable or false)
          )
          "services.modelgate: vLLM/SGLang workers use the CDI device nvidia.com/gpu=all, which needs hardware.nvidia-container-toolkit.enable = true.";
    })
  ]);
}
