# NixOS VM test: the real check of nix/module.nix (`nix build .#checks.x86_64-linux.vm`, needs
# KVM). modelgate runs from socket units (TCP + unix), gets its secrets as credentials, routes
# to a mock upstream, reloads on SIGHUP, and picks up a config change with a reload (same PID)
# when the system switches to a specialisation with one more model. Two llama.cpp workers (a
# stand-in llama-server that answers /health with 503 for its first 5 s) show that a worker
# unit is active only once `modelgate wait-ready` sees a 2xx, that the second starts after the
# first (sequentialStart), and that shared defaults and --flash-attn on reach its command line.
{
  modelgateModule ? ../module.nix,
}:
{
  name = "modelgate";

  nodes.machine =
    { pkgs, ... }:
    let
      # Answers chat completions with the model it was asked for and the Authorization header
      # it received, so the test can see the credential reached the upstream.
      mock = pkgs.writeScript "mock-upstream" ''
        #!${pkgs.python3}/bin/python3
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(n) or b"{}")
                body = json.dumps({
                    "object": "chat.completion",
                    "model": req.get("model"),
                    "path": self.path,
                    "upstream_auth": self.headers.get("Authorization"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from mock"}}],
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        ThreadingHTTPServer(("127.0.0.1", 9001), Handler).serve_forever()
      '';
      # Stands in for llama.cpp's llama-server: --port and --alias as llama-server takes them,
      # /health 503 while "loading" (5 s), and chat completions that echo its argv.
      fakeLlamaCpp = pkgs.writeTextFile {
        name = "fake-llama-cpp";
        destination = "/bin/llama-server";
        executable = true;
        text = ''
          #!${pkgs.python3}/bin/python3
          import json, sys, time
          from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

          argv = sys.argv[1:]
          port = int(argv[argv.index("--port") + 1])
          alias = argv[argv.index("--alias") + 1]
          started = time.monotonic()

          class Handler(BaseHTTPRequestHandler):
              protocol_version = "HTTP/1.1"

              def reply(self, code, doc):
                  body = json.dumps(doc).encode()
                  self.send_response(code)
                  self.send_header("Content-Type", "application/json")
                  self.send_header("Content-Length", str(len(body)))
                  self.end_headers()
                  self.wfile.write(body)

              def do_GET(self):
                  loaded = time.monotonic() - started >= 5
                  if self.path == "/health":
                      self.reply(200 if loaded else 503, {"status": "ok" if loaded else "loading model"})
                  else:
                      self.reply(404, {"error": "not found"})

              def do_POST(self):
                  n = int(self.headers.get("Content-Length") or 0)
                  self.rfile.read(n)
                  self.reply(200, {"object": "chat.completion", "model": alias, "argv": argv})

          ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
        '';
      };
    in
    {
      imports = [ modelgateModule ];

      systemd.services.mock-upstream = {
        wantedBy = [ "multi-user.target" ];
        before = [ "modelgate.service" ];
        serviceConfig = {
          ExecStart = "${mock}";
          DynamicUser = true;
        };
      };

      # Test secrets. In production these live outside the store (sops-nix, agenix,
      # systemd-creds); LoadCredential copies them into the service's private directory.
      environment.etc."modelgate-test/client-token".text = "client-secret";
      environment.etc."modelgate-test/upstream-key".text = "sk-upstream-secret";

      services.modelgate = {
        enable = true;
        listen = [
          "127.0.0.1:8080"
          {
            address = "unix:/run/modelgate/api.sock";
            mode = "0666";
          }
        ];
        credentials = {
          client-token = "/etc/modelgate-test/client-token";
          upstream-key = "/etc/modelgate-test/upstream-key";
        };
        settings = {
          authTokens = [ "\${cred:client-token}" ];
          timeouts.shutdown = 5;
          models.chat = {
            url = "http://127.0.0.1:9001";
            headers.Authorization = "Bearer \${cred:upstream-key}";
          };
        };
        llama-cpp.defaults = {
          package = fakeLlamaCpp;
          settings = {
            flash-attn = true;
            ctx-size = 4096;
          };
        };
        llama-cpp.models.first = {
          model = "/var/empty/first.gguf";
          port = 8201;
        };
        llama-cpp.models.second = {
          model = "/var/empty/second.gguf";
          port = 8202;
          settings.ctx-size = 8192;
        };
      };

      # The same system with one more model: switching to it must reload, not restart.
      specialisation.more-models.configuration = {
        services.modelgate.settings.models.added.url = "http://127.0.0.1:9001";
      };

      environment.systemPackages = [
        pkgs.curl
        pkgs.iproute2
      ];
    };

  testScript = ''
    import json

    def chat(model, token="client-secret", where="http://127.0.0.1:8080"):
        extra = "--unix-socket /run/modelgate/api.sock " if where == "unix" else ""
        url = "http://localhost" if where == "unix" else where
        out = machine.succeed(
            f"curl -sS --fail-with-body {extra}-H 'Authorization: Bearer {token}' "
            f"-H 'Content-Type: application/json' "
            f"-d '{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}' "
            f"{url}/v1/chat/completions"
        )
        return json.loads(out)

    machine.wait_for_unit("mock-upstream.service")
    machine.wait_for_open_port(9001)
    machine.wait_for_unit("modelgate-listen-0.socket")
    machine.wait_for_unit("modelgate-listen-1.socket")
    machine.wait_for_unit("modelgate.service")

    with subtest("the sockets are systemd's: modelgate binds nothing (SocketBindDeny=any)"):
        machine.succeed("ss -Hltnp 'sport = :8080' | grep -q '\"systemd\"'")
        machine.succeed("test -S /run/modelgate/api.sock")
        machine.succeed("systemctl show -p Type --value modelgate | grep -qx notify")

    with subtest("a chat completion is routed, with the upstream key from a credential"):
        r = chat("chat")
        assert r["model"] == "chat", r
        assert r["path"] == "/v1/chat/completions", r
        assert r["upstream_auth"] == "Bearer sk-upstream-secret", r
        r = chat("chat", where="unix")
        assert r["model"] == "chat", r

    with subtest("the client token from a credential is enforced"):
        machine.succeed(
            "curl -s -o /dev/null -w '%{http_code}' -d '{\"model\":\"chat\"}' "
            "http://127.0.0.1:8080/v1/chat/completions | grep -qx 401"
        )
        machine.succeed("curl -sf http://127.0.0.1:8080/health")

    with subtest("secrets never reach the store-backed config"):
        machine.fail("grep -r client-secret /etc/modelgate/")
        machine.fail("grep -r sk-upstream-secret /etc/modelgate/")

    pid = machine.succeed("systemctl show -p MainPID --value modelgate").strip()

    with subtest("systemctl reload sends SIGHUP and keeps the process"):
        machine.succeed("systemctl reload modelgate")
        machine.wait_until_succeeds("journalctl -u modelgate -o cat | grep -q 'reloaded'")
        assert machine.succeed("systemctl show -p MainPID --value modelgate").strip() == pid
        chat("chat")

    with subtest("a config change switches by reload (same PID), and the new model routes"):
        machine.succeed("/run/current-system/specialisation/more-models/bin/switch-to-configuration test")
        machine.wait_until_succeeds(
            "test $(journalctl -u modelgate -o cat | grep -c 'reloaded') -ge 2"
        )
        assert machine.succeed("systemctl show -p MainPID --value modelgate").strip() == pid
        assert chat("added")["model"] == "added"

    with subtest("llama.cpp workers: active only once /health is 2xx, one after the other"):
        def mono(unit, prop):
            return int(machine.succeed(f"systemctl show -p {prop} --value {unit}").strip())
        first, second = "modelgate-llama-cpp-first.service", "modelgate-llama-cpp-second.service"
        machine.wait_for_unit(first)
        machine.wait_for_unit(second)
        # The stand-in answers 503 for 5 s: wait-ready held the unit in "activating" meanwhile.
        assert mono(first, "ActiveEnterTimestampMonotonic") - mono(first, "ExecMainStartTimestampMonotonic") >= 5_000_000
        machine.succeed(f"journalctl -u {first} -o cat | grep -q 'answered 503'")
        # sequentialStart: the second worker's process started after the first was ready.
        assert mono(second, "ExecMainStartTimestampMonotonic") >= mono(first, "ActiveEnterTimestampMonotonic")
        # modelgate itself waited for both (waitForWorkers).
        assert mono("modelgate.service", "ActiveEnterTimestampMonotonic") >= mono(second, "ActiveEnterTimestampMonotonic")

    with subtest("worker routes, with the shared defaults and --flash-attn on on the command line"):
        r = chat("second")
        assert r["model"] == "second", r
        argv = r["argv"]
        assert argv[argv.index("--flash-attn") + 1] == "on", argv
        assert argv[argv.index("--ctx-size") + 1] == "8192", argv
        argv = chat("first")["argv"]
        assert argv[argv.index("--ctx-size") + 1] == "4096", argv

    with subtest("hardening is in force"):
        print(machine.succeed("systemd-analyze security modelgate.service | tail -n 1"))
        machine.succeed("systemctl show -p DynamicUser --value modelgate | grep -qx yes")

    with subtest("stop drains and exits cleanly"):
        machine.succeed("systemctl stop modelgate.service")
        machine.succeed("systemctl show -p Result --value modelgate | grep -qx success")
        # The sockets stay: the next connection starts modelgate again.
        chat("chat")
        machine.wait_for_unit("modelgate.service")
  '';
}
