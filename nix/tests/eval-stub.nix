# A SYNTAX-AND-SHAPE check of nix/module.nix that needs no nixpkgs: a small stand-in for the
# NixOS module system (mkOption, mkIf, mkMerge, mkDefault/mkForce, the types the module uses,
# submodule defaults and coercions) written with builtins only, plus fake `pkgs`. It calls the
# module with several configurations and checks what it produces: the service's
# serviceConfig (Type=notify, reload, hardening), the socket units made from `listen`,
# LoadCredential lines, the rendered config and its build-time `--check`, the workers' units
# and routes, and the collision assertions.
#
# It is NOT the NixOS module system: option priorities, type merging of several definitions,
# and every other NixOS module are not modelled. The real test is nix/tests/vm.nix
# (`nix build .#checks.x86_64-linux.vm`).
#
#   nix-instantiate --eval --strict nix/tests/eval-stub.nix -A summary
# prints a summary, or fails naming every check that did not hold.
{ }:

let
  b = builtins;

  # ---- a tiny lib ---------------------------------------------------------------------------
  last = l: b.elemAt l (b.length l - 1);
  isOption = v: b.isAttrs v && (v._type or null) == "option";
  absent = {
    _stubAbsent = true;
  };
  isAbsent = v: b.isAttrs v && v ? _stubAbsent;
  isLeafAttrs = v: v ? outPath || v ? _type;
  showLoc = loc: b.concatStringsSep "." loc;

  mkType = name: check: {
    inherit name check;
    apply = loc: v: if check v then v else b.throw "stub: ${showLoc loc}: not a ${name}: ${b.toJSON v}";
  };

  types = rec {
    str = mkType "string" b.isString;
    bool = mkType "bool" b.isBool;
    int = mkType "int" b.isInt;
    float = mkType "float" b.isFloat;
    port = mkType "port" (v: b.isInt v && v >= 0 && v <= 65535);
    package = mkType "package" (v: b.isAttrs v && v ? outPath);
    path = mkType "path" (v: b.isPath v || b.isString v);
    anything = mkType "anything" (_: true);
    json = mkType "JSON value" (v: !(b.isFunction v));
    nullOr = t: {
      name = "null or ${t.name}";
      check = v: v == null || t.check v;
      apply = loc: v: if v == null then null else t.apply loc v;
    };
    listOf = t: {
      name = "list of ${t.name}";
      check = b.isList;
      apply =
        loc: v:
        if b.isList v then
          b.genList (i: t.apply (loc ++ [ "[${toString i}]" ]) (b.elemAt v i)) (b.length v)
        else
          b.throw "stub: ${showLoc loc}: not a list";
    };
    attrsOf = t: {
      name = "attrs of ${t.name}";
      check = b.isAttrs;
      apply =
        loc: v:
        if b.isAttrs v then b.mapAttrs (n: x: t.apply (loc ++ [ n ]) x) v else b.throw "stub: ${showLoc loc}: not an attrset";
    };
    oneOf = ts: {
      name = "one of ${b.concatStringsSep ", " (map (t: t.name) ts)}";
      check = v: b.any (t: t.check v) ts;
      apply =
        loc: v:
        let
          t = b.filter (t: t.check v) ts;
        in
        if t == [ ] then b.throw "stub: ${showLoc loc}: matches none of the types" else (b.head t).apply loc v;
    };
    coercedTo = from: f: to: {
      name = "${to.name} or ${from.name}";
      check = v: from.check v || to.check v;
      apply = loc: v: if from.check v then to.apply loc (f v) else to.apply loc v;
    };
    submodule = m: {
      name = "submodule";
      check = v: b.isAttrs v;
      apply =
        loc: v:
        let
          self = evalOptions loc (mod.options or { }) v (mod ? freeformType);
          mod =
            if b.isFunction m then
              m {
                name = last loc;
                config = self;
                inherit lib;
              }
            else
              m;
        in
        self;
    };
  };

  # Values for a tree of options from one definition (the user's attrset); defaults apply, and
  # a typo in an option name is an error (unless the submodule is freeform).
  evalOptions =
    loc: opts: defs: freeform:
    let
      unknown = b.filter (n: !(opts ? ${n})) (b.attrNames defs);
      declared = b.mapAttrs (
        n: o:
        if isOption o then
          (
            if defs ? ${n} then
              o.type.apply (loc ++ [ n ]) defs.${n}
            else if o ? default then
              o.type.apply (loc ++ [ n ]) o.default
            else
              b.throw "stub: option ${showLoc (loc ++ [ n ])} is used but not defined"
          )
        else
          evalOptions (loc ++ [ n ]) o (defs.${n} or { }) false
      ) opts;
    in
    if freeform then
      (removeAttrs defs (b.attrNames opts)) // declared
    else if unknown != [ ] then
      b.throw "stub: no such option: ${showLoc (loc ++ [ (b.head unknown) ])}"
    else
      declared;

  # The module's `config`: mkIf/mkMerge/overrides resolved, definitions merged deeply.
  resolve =
    v:
    if b.isAttrs v && (v._type or null) == "if" then
      (if v.condition then resolve v.content else absent)
    else if b.isAttrs v && (v._type or null) == "merge" then
      b.foldl' deepMerge { } (b.filter (x: !(isAbsent x)) (map resolve v.contents))
    else if b.isAttrs v && (v._type or null) == "override" then
      resolve v.content
    else if b.isAttrs v && !(isLeafAttrs v) then
      let
        r = b.mapAttrs (_: resolve) v;
      in
      removeAttrs r (b.filter (n: isAbsent r.${n}) (b.attrNames r))
    else
      v;
  deepMerge =
    a: c:
    b.foldl' (
      acc: n:
      let
        x = acc.${n};
        y = c.${n};
      in
      acc
      // {
        ${n} =
          if !(acc ? ${n}) then
            y
          else if b.isAttrs x && b.isAttrs y && !(isLeafAttrs x) && !(isLeafAttrs y) then
            deepMerge x y
          else if b.isList x && b.isList y then
            x ++ y
          else if x == y then
            x
          else
            b.throw "stub: conflicting definitions of ${n}";
      }
    ) a (b.attrNames c);

  lib = rec {
    inherit types;
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = what: mkOption {
      type = types.bool;
      default = false;
      description = "Whether to enable ${what}.";
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkOverride = priority: content: {
      _type = "override";
      inherit priority content;
    };
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    hasPrefix = p: s: b.substring 0 (b.stringLength p) s == p;
    removePrefix =
      p: s: if hasPrefix p s then b.substring (b.stringLength p) (b.stringLength s - b.stringLength p) s else s;
    toInt =
      s:
      let
        n = b.fromJSON s;
      in
      if b.isInt n then n else b.throw "toInt: ${s}";
    imap0 = f: l: b.genList (i: f i (b.elemAt l i)) (b.length l);
    mapAttrsToList = f: a: map (n: f n a.${n}) (b.attrNames a);
    filterAttrs = p: a: removeAttrs a (b.filter (n: !(p n a.${n})) (b.attrNames a));
    inherit (b)
      concatLists
      concatMap
      filter
      any
      all
      listToAttrs
      concatStringsSep
      ;
    nameValuePair = name: value: { inherit name value; };
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: l: if c then l else [ ];
    optionalAttrs = c: a: if c then a else { };
    optionalString = c: s: if c then s else "";
    count = p: l: b.length (b.filter p l);
    unique = b.foldl' (acc: x: if b.elem x acc then acc else acc ++ [ x ]) [ ];
    concatMapStringsSep = sep: f: l: b.concatStringsSep sep (map f l);
    escapeShellArg = s: "'${b.replaceStrings [ "'" ] [ "'\\''" ] (toString s)}'";
    escapeShellArgs = l: b.concatStringsSep " " (map escapeShellArg l);
    getExe = p: "${p}/bin/${p.meta.mainProgram}";
  };

  # ---- fake pkgs ----------------------------------------------------------------------------
  fakePkg = name: {
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };
  pkgs = {
    formats.json =
      { }:
      {
        type = types.json;
        generate = name: value: (fakePkg name) // { inherit value; };
      };
    callPackage = _path: _args: fakePkg "modelgate";
    runCommand = name: env: script: (fakePkg name) // { inherit env script; };
    # The module interpolates scripts into ExecStartPost=; the stub's "store path" carries the
    # script text so the check can read it back.
    writeShellScript =
      name: text:
      (fakePkg name)
      // {
        outPath = "/nix/store/00000000000000000000000000000000-${name} <<SCRIPT ${text}";
      };
    curl = fakePkg "curl";
    coreutils = fakePkg "coreutils";
    llama-cpp = fakePkg "llama-cpp";
  };

  # ---- evaluating the module ----------------------------------------------------------------
  module = import ../module.nix;
  eval =
    userConfig:
    let
      opts = (module { config = fakeConfig; inherit lib pkgs; }).options;
      cfg = evalOptions [ "services" "modelgate" ] opts.services.modelgate userConfig false;
      fakeConfig = {
        services.modelgate = cfg;
      };
      out = resolve (module { config = fakeConfig; inherit lib pkgs; }).config;
    in
    (if isAbsent out then { } else out) // { _cfg = cfg; };

  failedAssertions = out: map (a: a.message) (b.filter (a: !a.assertion) (out.assertions or [ ]));

  # ---- the configurations and what must hold ------------------------------------------------
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

  workers = eval {
    enable = true;
    settings.models.gpt.url = "https://api.openai.com";
    llama-cpp.models = {
      qwen = {
        model = "/var/lib/models/qwen.gguf";
        port = 8101;
        settings = {
          ctx-size = 8192;
          flash-attn = true;
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
      };
      off = {
        enable = false;
        model = "/x.gguf";
        port = 8109;
      };
    };
    vllm.models.big = {
      model = "Qwen/Qwen3-8B";
      port = 8102;
      settings.max-model-len = 32768;
      environmentFile = "/run/secrets/hf.env";
    };
    sglang.models.fast = {
      model = "Qwen/Qwen3-0.6B";
      port = 8103;
    };
  };
  wsvc = workers.systemd.services;
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
    vllm.models."bad name" = {
      model = "x";
      port = 8106;
    };
  };
  collideMsgs = failedAssertions collide;
  hasMsg = sub: b.any (m: b.match ".*${sub}.*" m != null) collideMsgs;

  disabled = eval { settings.models.gpt.url = "http://127.0.0.1:1"; };

  # The settings the module rendered: what the fake `formats.json.generate` was given, reached
  # through the runCommand that checks it.
  renderedSettings = out: out.environment.etc."modelgate/config.json".source.env.renderedConfig.value;
  basicJson = renderedSettings basic;
  workersJson = renderedSettings workers;

  checks = {
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
      && rendered.env.nativeBuildInputs == [ basic._cfg.package ];
    "rendered listen = the socket addresses" =
      basicJson.listen == [
        "127.0.0.1:8080"
        "unix:/run/modelgate/api.sock"
        ":9090"
      ];
    "rendered config keeps secrets as references" =
      basicJson.models.gpt.headers.Authorization == "Bearer \${cred:openai-key}"
      && basicJson.authTokens == [ "\${cred:client-token}" ];
    "no failed assertion on a good config" = failedAssertions basic == [ ];

    "llama.cpp worker unit is hardened and DynamicUser" =
      let
        w = wsvc.modelgate-llama-cpp-qwen.serviceConfig;
      in
      w.DynamicUser && w.ProtectSystem == "strict" && w.NoNewPrivileges && w.CapabilityBoundingSet == "";
    "llama.cpp flags rendered from settings" =
      b.match ".*llama-server' '--model' '/var/lib/models/qwen.gguf' '--alias' 'qwen' '--host' '127.0.0.1' '--port' '8101' .*'--ctx-size' '8192'.*" wsvc.modelgate-llama-cpp-qwen.serviceConfig.ExecStart
        != null
      && b.match ".*'--flash-attn'.*" wsvc.modelgate-llama-cpp-qwen.serviceConfig.ExecStart != null
      && b.match ".*no-webui.*" wsvc.modelgate-llama-cpp-qwen.serviceConfig.ExecStart == null
      && b.match ".*'--lora' '/m/a.gguf' '--lora' '/m/b.gguf'.*" wsvc.modelgate-llama-cpp-qwen.serviceConfig.ExecStart != null;
    "llama.cpp may bind only its own port" =
      wsvc.modelgate-llama-cpp-qwen.serviceConfig.SocketBindAllow == [ "tcp:8101" ]
      && wsvc.modelgate-llama-cpp-qwen.serviceConfig.SocketBindDeny == "any";
    "llama.cpp on a unix socket" =
      b.match ".*'--host' '/run/modelgate-llama-cpp-small/http.sock'.*" wsvc.modelgate-llama-cpp-small.serviceConfig.ExecStart != null
      && wsvc.modelgate-llama-cpp-small.serviceConfig.RuntimeDirectory == "modelgate-llama-cpp-small";
    "a disabled worker has no unit and no route" =
      !(wsvc ? modelgate-llama-cpp-off) && !(workersJson.models ? off);
    "readiness probe before the unit counts as started" =
      b.match ".*curl.*http://127.0.0.1:8101/health.*" wsvc.modelgate-llama-cpp-qwen.serviceConfig.ExecStartPost != null
      && b.match ".*--unix-socket /run/modelgate-llama-cpp-small/http.sock http://localhost/health.*" wsvc.modelgate-llama-cpp-small.serviceConfig.ExecStartPost != null;
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
        "podman-modelgate-sglang-fast.service"
      ];
    "vLLM and SGLang as Podman containers with GPUs, on loopback" =
      let
        c = workers.virtualisation.oci-containers.containers;
      in
      workers.virtualisation.oci-containers.backend == "podman"
      && c.modelgate-vllm-big.ports == [ "127.0.0.1:8102:8000" ]
      && b.elem "--device=nvidia.com/gpu=all" c.modelgate-vllm-big.extraOptions
      && b.elem "--served-model-name" c.modelgate-vllm-big.cmd
      && b.elem "--max-model-len" c.modelgate-vllm-big.cmd
      && c.modelgate-vllm-big.environmentFiles == [ "/run/secrets/hf.env" ]
      && b.head c.modelgate-sglang-fast.cmd == "python3";
    "container readiness probes" =
      b.match ".*http://127.0.0.1:8102/health.*" (b.head wsvc.podman-modelgate-vllm-big.serviceConfig.ExecStartPost) != null;
    "GPU warning without the NVIDIA container toolkit" = b.length (workers.warnings or [ ]) == 1;
    "no failed assertion with workers" = failedAssertions workers == [ ];

    "assertion: port used twice" = hasMsg "port.*used twice.*8101";
    "assertion: model name defined twice" = hasMsg "model name.*defined twice.*qwen";
    "assertion: port and unixSocket both set" = hasMsg "both.*exactly one of port and unixSocket";
    "assertion: unit-unsafe worker name" = hasMsg "bad name.*unit name";

    "enable = false produces nothing" = disabled == { _cfg = disabled._cfg; };
  };

  failed = b.filter (n: !checks.${n}) (b.attrNames checks);
in
{
  inherit checks collideMsgs;
  summary =
    if failed == [ ] then
      "module shape: ${toString (b.length (b.attrNames checks))} checks passed"
    else
      b.throw "module shape: FAILED: ${b.concatStringsSep "; " failed}";
}
