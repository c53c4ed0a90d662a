{
  description = "hyperhive: a NixOS-native hive manager for AI agents";

  # The pin is flake.lock's (nixos-25.11). Outputs that need nixpkgs (packages, checks, devShells)
  # are evaluated only where nixpkgs can be fetched; `nixosModules` and `overlays` are plain
  # functions and evaluate offline (`nix flake show --offline`).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      # builtins only, so the output names are known without fetching nixpkgs
      forAllSystems = f: builtins.listToAttrs (map
        (system: { name = system; value = f nixpkgs.legacyPackages.${system}; })
        systems);

      # `hive-agent` static (it is copied into agents' images without its closure), `hive` as usual.
      packagesFor = pkgs: rec {
        hyperhive-harness-static = pkgs.pkgsStatic.callPackage ./nix/package.nix { harnessOnly = true; };
        hyperhive = pkgs.callPackage ./nix/package.nix { staticHarness = hyperhive-harness-static; };
        default = hyperhive;
      };
    in
    {
      overlays.default = final: _prev: {
        inherit (packagesFor final) hyperhive;
      };

      packages = forAllSystems packagesFor;

      nixosModules.default = { pkgs, lib, ... }: {
        imports = [ ./nixos-module/default.nix ];
        services.hyperhive.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };
      # What an agent's agent.nix is evaluated with by the nixos builder.
      nixosModules.agent = ./nixos-module/agent-module.nix;

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        # The module with every option set evaluates, and its hive.toml passes `hive check-config`.
        module = (nixpkgs.lib.nixosSystem {
          inherit (pkgs.stdenv.hostPlatform) system;
          modules = [
            self.nixosModules.default
            {
              boot.isContainer = true;
              system.stateVersion = "25.11";
              services.hyperhive = {
                enable = true;
                dashboard = { address = "0.0.0.0"; port = 7100; openFirewall = true; };
                runtime = "nspawn";
                autoUpdate = true;
                settings = import ./nixos-module/settings-example.nix;
              };
            }
          ];
        }).config.systemd.units."hyperhive.service".unit;
        vm = pkgs.testers.runNixOSTest (import ./nix/tests/vm.nix { inherit self; });
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          # What the tests drive for real (scripts/test): nix, nspawn, a static busybox, git, the
          # claude CLI's runtime, Python's MCP SDK's, and Chromium for the dashboard's browser test.
          packages = with pkgs; [
            cargo rustc clippy rustfmt rust-analyzer
            git nix systemd pkgsStatic.busybox socat
            nodejs python3 chromium chromedriver
          ];
        };
      });
    };
}
