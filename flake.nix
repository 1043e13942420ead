{
  description = "CIM, the Composable Information Machine: NATS JetStream agents in NixOS containers";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    colmena = {
      url = "github:zhaofengli/colmena";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      colmena,
    }:
    let
      inherit (nixpkgs) lib;
      capabilities = import ./modules/capabilities.nix;
      # ONE host list for nixosConfigurations and the colmena hive.
      hosts = import ./hosts;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      pythonDeps = import ./nix/python-deps.nix { inherit lib; };

      evalTests = pkgs: import ./tests/nix { inherit (pkgs) lib; };

      optionsDocJSON =
        pkgs:
        pkgs.writeText "cim-options.json" (builtins.toJSON (import ./tests/nix/options-doc.nix { inherit (pkgs) lib; }));
    in
    {
      overlays.default = final: prev: { cim = final.callPackage ./package.nix { }; };

      # `default` is the path ./modules, so every module that imports it shares one key and
      # NixOS imports it once: `default` + `store`, or `store` + `hub`, define each option once.
      nixosModules =
        {
          default = ./modules;
        }
        # nixosModules.<capability>: CIM with that capability switched on.
        // lib.genAttrs capabilities.names (name: {
          key = "cim#nixosModules.${name}";
          imports = [ ./modules ];
          services.cim.${name}.enable = lib.mkDefault true;
        });

      packages = forAllSystems (
        pkgs:
        let
          cim = pkgs.callPackage ./package.nix { };
        in
        {
          inherit cim;
          default = cim;
          # The services.cim option reference, as Markdown (the same text as docs/options.md).
          options-doc = pkgs.runCommand "cim-options.md" { nativeBuildInputs = [ pkgs.python3 ]; } ''
            python3 ${./tests/nix/render_options.py} --json ${optionsDocJSON pkgs} --output $out
          '';
        }
      );

      nixosConfigurations = lib.mapAttrs (
        name: host:
        lib.nixosSystem {
          modules = host.modules ++ [ self.nixosModules.default ];
        }
      ) hosts;

      colmena =
        {
          meta = {
            # The same package set the nixosConfigurations get, not a second import of nixpkgs.
            nixpkgs = nixpkgs.legacyPackages.x86_64-linux;
            description = "CIM: a leaf and a 3-node cluster";
          };
        }
        // lib.mapAttrs (name: host: {
          imports = host.modules ++ [ self.nixosModules.default ];
          inherit (host) deployment;
        }) hosts;

      colmenaHive = colmena.lib.makeHive self.colmena;

      checks = forAllSystems (
        pkgs:
        let
          results = evalTests pkgs;
          cim = self.packages.${pkgs.stdenv.hostPlatform.system}.cim;
          vmTest = file: pkgs.testers.runNixOSTest (import file { inherit self; });
        in
        {
          package = cim;

          # The evaluation tests, against the real nixpkgs lib.
          eval-tests =
            if results.failures == [ ] then
              pkgs.runCommand "cim-eval-tests" { } "echo '${toString results.count} evaluation tests passed' > $out"
            else
              throw "CIM evaluation tests failed: ${builtins.toJSON results.failures}";

          # Every agent config the modules render is accepted by `cim config check`.
          agent-configs = pkgs.runCommand "cim-agent-configs" { } (
            lib.concatStrings (
              lib.mapAttrsToList (name: settings: ''
                ${cim}/bin/cim config check ${pkgs.writeText "${name}.json" (builtins.toJSON settings)}
              '') results.agentConfigs
            )
            + "touch $out"
          );

          # docs/options.md is what the options say now.
          options-doc = pkgs.runCommand "cim-options-doc-current" { nativeBuildInputs = [ pkgs.python3 ]; } ''
            python3 ${./tests/nix/render_options.py} --json ${optionsDocJSON pkgs} --check ${./docs/options.md}
            touch $out
          '';

          vm-leaf = vmTest ./tests/nixos/leaf.nix;
          vm-cluster = vmTest ./tests/nixos/cluster.nix;
          vm-security = vmTest ./tests/nixos/security.nix;
          vm-pipeline = vmTest ./tests/nixos/pipeline.nix;
          vm-tiering = vmTest ./tests/nixos/tiering.nix;
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          # pyproject.toml's runtime and test requirements, through the same table as the package.
          packages = [
            (pkgs.python3.withPackages (ps: pythonDeps.dependencies ps ++ pythonDeps.testDependencies ps))
            pkgs.natscli
            pkgs.nixfmt
            colmena.packages.${pkgs.stdenv.hostPlatform.system}.colmena
          ]
          ++ pythonDeps.testPrograms pkgs;
          # The evaluation tests find nixpkgs' lib here.
          CIM_NIXPKGS_LIB = "${nixpkgs}/lib";
        };
      });
    };
}
