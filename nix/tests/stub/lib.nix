# A small stand-in for nixpkgs' `lib` and its module system, written with builtins only, so
# that nix/module.nix can be evaluated on machines without nixpkgs (scripts/nix-check.sh).
#
# What it models, because the checks depend on it (each as nixpkgs' lib/modules.nix and
# lib/types.nix behave):
#   - several modules declaring options and defining config, merged; `imports`;
#   - mkIf / mkMerge pushed down to the option they define, conditions evaluated only there
#     (so `config = mkIf cfg.enable ...` does not recurse), and a definition of an option that
#     no module declares is an error even under a false mkIf;
#   - priorities: a definition is 100, mkDefault 1000, mkForce 50, an option's default 1500;
#     only the definitions of the best priority are merged (per attribute inside attrsOf);
#   - merging by type: lists concatenate, attrsOf merges per name, submodules evaluate their
#     definitions as modules (with `name`, defaults, freeformType), and single-valued types
#     (str, bool, int, enum, strMatching, ...) fail with "conflicting definition values"
#     unless all definitions are equal; package takes exactly one definition;
#   - type checks, with nixpkgs' wording: "A definition for option `x' is not of type `y'".
#     They run when the value is forced, as in nixpkgs.
# What it does not model: mkOrder/mkBefore/mkAfter, mkRenamedOptionModule and friends,
# `_module.args`, option `apply` chains across declarations, `types.lazyAttrsOf`,
# `readOnly`/`visible`, definition file locations in messages, and every type the module does
# not use. It is checked against nixpkgs only by reading; the eval-* checks of flake.nix run
# the module on the real module system where nixpkgs is available.
let
  b = builtins;

  isType = t: v: b.isAttrs v && (v._type or null) == t;
  isOption = isType "option";
  showLoc = loc: b.concatStringsSep "." loc;
  last = l: b.elemAt l (b.length l - 1);
  # Package-like values are leaves: never merged attribute by attribute.
  isLeafAttrs = v: v ? outPath || v ? _type;

  # ---- properties ---------------------------------------------------------------------------
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
  defaultPriority = 100;

  # The definitions a (possibly property-wrapped) value makes at `path` below it, with the
  # properties above that path kept around them, their conditions not yet evaluated.
  defsAt =
    path: v:
    if path == [ ] then
      [ v ]
    else if isType "if" v then
      map (mkIf v.condition) (defsAt path v.content)
    else if isType "merge" v then
      b.concatMap (defsAt path) v.contents
    else if isType "override" v then
      map (mkOverride v.priority) (defsAt path v.content)
    else if b.isAttrs v && v ? ${b.head path} then
      defsAt (b.tail path) v.${b.head path}
    else
      [ ];

  # The attribute names a value defines at its own level, conditions not evaluated.
  namesOf =
    v:
    if isType "if" v || isType "override" v then
      namesOf v.content
    else if isType "merge" v then
      b.concatMap namesOf v.contents
    else if b.isAttrs v && !(isLeafAttrs v) then
      b.attrNames v
    else
      [ ];

  # At an option: conditions evaluated, merges flattened, each value with its priority.
  discharge =
    priority: v:
    if isType "if" v then
      (
        if !(b.isBool v.condition) then
          b.throw "mkIf called with a non-Boolean condition"
        else if v.condition then
          discharge priority v.content
        else
          [ ]
      )
    else if isType "merge" v then
      b.concatMap (discharge priority) v.contents
    else if isType "override" v then
      discharge v.priority v.content
    else
      [
        {
          inherit priority;
          value = v;
        }
      ];

  # Only the definitions of the highest priority (lowest number) count.
  filterOverrides =
    defs:
    let
      best = b.foldl' (m: d: if d.priority < m then d.priority else m) 9999 defs;
    in
    map (d: d.value) (b.filter (d: d.priority == best) defs);

  # ---- merge functions ----------------------------------------------------------------------
  notOfType = loc: t: b.throw "A definition for option `${showLoc loc}' is not of type `${t.description}'.";
  checked = loc: t: values: if b.all t.check values then values else notOfType loc t;

  mergeEqual =
    t: loc: values:
    let
      vs = checked loc t values;
      first = b.head vs;
    in
    if b.all (v: v == first) vs then first else b.throw "The option `${showLoc loc}' has conflicting definition values.";
  mergeOne =
    t: loc: values:
    let
      vs = checked loc t values;
    in
    if b.length vs == 1 then b.head vs else b.throw "The option `${showLoc loc}' is defined multiple times while it's expected to be unique.";

  mkLeafType =
    description: check: merge:
    let
      self = {
        inherit description check;
        merge = merge self;
      };
    in
    self;

  # ---- types --------------------------------------------------------------------------------
  types = rec {
    str = mkLeafType "string" b.isString mergeEqual;
    # Only strings here; nixpkgs' `lines` joins them with newlines.
    lines = {
      description = "strings concatenated with \"\\n\"";
      check = b.isString;
      merge = loc: values: b.concatStringsSep "\n" (checked loc lines values);
    };
    bool = mkLeafType "boolean" b.isBool mergeEqual;
    int = mkLeafType "signed integer" b.isInt mergeEqual;
    float = mkLeafType "floating point number" b.isFloat mergeEqual;
    port = mkLeafType "16 bit unsigned integer; between 0 and 65535 (both inclusive)" (
      v: b.isInt v && v >= 0 && v <= 65535
    ) mergeEqual;
    path = mkLeafType "path" (v: b.isPath v || (b.isString v && builtins.substring 0 1 v == "/") || v ? outPath) mergeEqual;
    package = mkLeafType "package" (v: b.isAttrs v && v ? outPath) mergeOne;
    enum =
      values:
      mkLeafType "one of ${b.concatStringsSep ", " (map (v: "\"${toString v}\"") values)}" (
        v: b.elem v values
      ) mergeEqual;
    strMatching =
      pattern:
      mkLeafType "string matching the pattern ${pattern}" (
        v: b.isString v && b.match pattern v != null
      ) mergeEqual;

    nullOr = t: {
      description = "null or ${t.description}";
      check = v: v == null || t.check v;
      merge =
        loc: values:
        let
          nulls = b.filter (v: v == null) values;
        in
        if nulls == values then
          null
        else if nulls != [ ] then
          b.throw "The option `${showLoc loc}' is defined both null and not null."
        else
          t.merge loc values;
    };

    listOf = t: {
      description = "list of ${t.description}";
      check = b.isList;
      merge =
        loc: values:
        let
          defs = checked loc (listOf t) values;
          entries = b.concatLists (
            b.genList (
              i:
              let
                def = b.elemAt defs i;
              in
              b.genList (j: {
                loc = loc ++ [ "[definition ${toString (i + 1)}-entry ${toString (j + 1)}]" ];
                value = b.elemAt def j;
              }) (b.length def)
            ) (b.length defs)
          );
        in
        map (e: t.merge e.loc [ e.value ]) entries;
    };

    attrsOf = t: {
      description = "attribute set of ${t.description}";
      check = v: b.isAttrs v && !(isLeafAttrs v);
      merge =
        loc: values:
        let
          defs = checked loc (attrsOf t) values;
          names = lib.unique (b.concatMap b.attrNames defs);
          perName =
            n:
            filterOverrides (b.concatMap (d: if d ? ${n} then discharge defaultPriority d.${n} else [ ]) defs);
          # A name whose every definition was a false mkIf is not there (as in nixpkgs).
          present = b.filter (n: perName n != [ ]) names;
        in
        b.listToAttrs (
          map (n: {
            name = n;
            value = t.merge (loc ++ [ n ]) (perName n);
          }) present
        );
    };

    oneOf =
      ts:
      let
        self = {
          description = b.concatStringsSep " or " (map (t: t.description) ts);
          check = v: b.any (t: t.check v) ts;
          merge =
            loc: values:
            let
              fits = b.filter (t: b.all t.check values) ts;
            in
            if fits == [ ] then notOfType loc self else (b.head fits).merge loc values;
        };
      in
      self;
    either = a: c: oneOf [ a c ];

    coercedTo = from: coerce: to: {
      description = "${to.description} or ${from.description} convertible to it";
      check = v: (from.check v && to.check (coerce v)) || to.check v;
      merge = loc: values: to.merge loc (map (v: if from.check v then coerce v else v) values);
    };

    # nixpkgs' `anything`: attribute sets merge per name, lists concatenate, anything else
    # must be defined equally.
    anything = {
      description = "anything";
      check = _: true;
      merge =
        loc: values:
        if values != [ ] && b.all (v: b.isAttrs v && !(isLeafAttrs v)) values then
          (attrsOf anything).merge loc values
        else if values != [ ] && b.all b.isList values then
          b.concatLists values
        else
          mergeEqual anything loc values;
    };
    unspecified = anything;

    submodule = m: {
      description = "submodule";
      check = v: b.isAttrs v || b.isFunction v;
      merge =
        loc: values:
        (evalModules {
          modules = [ m ] ++ values;
          prefix = loc;
          args.name = last loc;
        }).config;
    };
  };

  # ---- evaluation ---------------------------------------------------------------------------
  # A module as { options, config, freeformType, imports }. As in nixpkgs, a module with
  # neither `options` nor `config` is the shorthand form: all of it is config except
  # `imports`, `freeformType` and the bookkeeping keys.
  normalize =
    m:
    if m ? options || m ? config then
      {
        options = m.options or { };
        config = m.config or { };
        freeformType = m.freeformType or null;
        imports = m.imports or [ ];
      }
    else
      {
        options = { };
        config = removeAttrs m [
          "_class"
          "_file"
          "key"
          "disabledModules"
          "imports"
          "freeformType"
        ];
        freeformType = m.freeformType or null;
        imports = m.imports or [ ];
      };

  # Option declarations of several modules as one tree (an option declared twice is an error;
  # nixpkgs merges some such declarations, nothing here needs that).
  mergeDecls =
    loc: a: c:
    b.foldl' (
      acc: n:
      acc
      // {
        ${n} =
          if !(acc ? ${n}) then
            c.${n}
          else if isOption acc.${n} || isOption c.${n} then
            b.throw "The option `${showLoc (loc ++ [ n ])}' is declared twice (the stub does not merge declarations)."
          else
            mergeDecls (loc ++ [ n ]) acc.${n} c.${n};
      }
    ) a (b.attrNames c);

  mergeOption =
    loc: opt: rawDefs:
    let
      defs =
        b.concatMap (discharge defaultPriority) rawDefs
        ++ (
          if opt ? default then
            [
              {
                priority = 1500;
                value = opt.default;
              }
            ]
          else
            [ ]
        );
      kept = filterOverrides defs;
      merged =
        if kept == [ ] then
          b.throw "The option `${showLoc loc}' is used but not defined."
        else
          (opt.type or types.anything).merge loc kept;
    in
    if opt ? apply then opt.apply merged else merged;

  # The config tree below `loc`: declared options merged, undeclared definitions an error
  # (or, with a freeform type, merged by it).
  buildConfig =
    loc: decls: defsList: freeform:
    let
      declared = b.mapAttrs (
        n: d:
        let
          sub = b.concatMap (defsAt [ n ]) defsList;
        in
        if isOption d then mergeOption (loc ++ [ n ]) d sub else buildConfig (loc ++ [ n ]) d sub null
      ) decls;
      undeclared = b.filter (n: !(decls ? ${n})) (lib.unique (b.concatMap namesOf defsList));
      freeformPart = freeform.merge loc (
        map (v: removeAttrs v (b.attrNames decls)) (filterOverrides (b.concatMap (discharge defaultPriority) defsList))
      );
    in
    if undeclared == [ ] then
      declared
    else if freeform != null then
      freeformPart // declared
    else
      b.throw "The option `${showLoc (loc ++ [ (b.head undeclared) ])}' does not exist.";

  evalModules =
    {
      modules,
      prefix ? [ ],
      args ? { },
    }:
    let
      call = m: normalize (if b.isFunction m then m (args // { inherit config options lib; }) else m);
      # A module imported twice by path counts once (nixpkgs dedups by file, too).
      collect =
        seen: ms:
        b.foldl' (
          acc: m:
          let
            key = if b.isPath m then toString m else null;
          in
          if key != null && b.elem key acc.seen then
            acc
          else
            let
              c = call (if key != null then import m else m);
              inner = collect (acc.seen ++ (if key != null then [ key ] else [ ])) c.imports;
            in
            {
              seen = inner.seen;
              modules = acc.modules ++ [ c ] ++ inner.modules;
            }
        ) {
          inherit seen;
          modules = [ ];
        } ms;
      modules' = (collect [ ] modules).modules;
      options = b.foldl' (mergeDecls prefix) { } (map (m: m.options) modules');
      freeforms = b.filter (t: t != null) (map (m: m.freeformType) modules');
      config = buildConfig prefix options (map (m: m.config) modules') (
        if freeforms == [ ] then null else b.head freeforms
      );
    in
    {
      inherit config options;
    };

  # ---- the rest of lib the module uses --------------------------------------------------------
  lib = rec {
    inherit
      types
      evalModules
      mkIf
      mkMerge
      mkOverride
      ;
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption =
      what:
      mkOption {
        type = types.bool;
        default = false;
        description = "Whether to enable ${what}.";
      };
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;
    mkOptionDefault = mkOverride 1500;
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
    mapAttrs' = f: a: b.listToAttrs (mapAttrsToList f a);
    filterAttrs = p: a: removeAttrs a (b.filter (n: !(p n a.${n})) (b.attrNames a));
    inherit (b)
      concatLists
      concatMap
      filter
      any
      all
      listToAttrs
      concatStringsSep
      elem
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
    versionAtLeast = v1: v2: b.compareVersions v1 v2 >= 0;
    # Literal, without a regex (nixpkgs' escapes the infix into one).
    hasInfix = infix: s: infix == "" || b.replaceStrings [ infix ] [ "" ] s != s;
    fixedWidthString =
      width: filler: s:
      if b.stringLength s >= width then s else fixedWidthString width filler (filler + s);
    genAttrs = names: f: b.listToAttrs (map (n: nameValuePair n (f n)) names);
    trivial.release = "25.11";
  };
in
lib
