# Monitoring through nixpkgs' own services: `prometheus` scrapes every enabled capability's
# agents (each serves /metrics on `settings.metrics.port` inside its container, one port per
# instance), and `grafana` gets the CIM dashboard (monitoring/grafana/cim.json, copied into
# the store from this source) and, if asked, a Prometheus datasource. Off by default.
{ config, lib, ... }:
let
  capabilities = import ./capabilities.nix;
  top = config.services.cim;
  cfg = top.monitoring;

  # The dashboard's folder: Grafana's file provider reads every dashboard in it.
  dashboards = ../monitoring/grafana;

  # One target per agent instance of each capability switched on, at its container's
  # address (an instance's port is the configured one plus N - 1, and its name the agent's
  # plus `-N`: cim.capability.for_instance), labelled as `cim up` labels its targets.
  targetsOf =
    name:
    let
      c = top.${name};
      port = c.settings.metrics.port;
      agent = c.settings.name or "cim-${name}";
    in
    map (i: {
      targets = [ "${c.localAddress}:${toString (port + i)}" ];
      labels = {
        capability = name;
        agent = if c.instances > 1 then "${agent}-${toString (i + 1)}" else agent;
      };
    }) (lib.range 0 (c.instances - 1));
  scraped = builtins.filter (name: top.${name}.enable && top.${name}.settings.metrics.port or null != null) capabilities.names;
in
{
  options.services.cim.monitoring = {
    prometheus.enable = lib.mkEnableOption ''
      scraping every enabled CIM agent with this host's Prometheus ({option}`services.prometheus`,
      switched on with `lib.mkDefault`): the job `cim`, one target per agent instance at its
      container's address and metrics port, labelled `capability` and `agent` as `cim up`
      labels its own'';

    grafana = {
      enable = lib.mkEnableOption ''
        the CIM dashboard in this host's Grafana ({option}`services.grafana`, switched on with
        `lib.mkDefault`), provisioned from a file in the Nix store into the folder "CIM".
        Grafana's own settings (its address, its `security.secret_key`) stay yours to set'';

      datasource = {
        enable = lib.mkOption {
          type = lib.types.bool;
          default = cfg.prometheus.enable;
          defaultText = lib.literalExpression "config.services.cim.monitoring.prometheus.enable";
          description = ''
            Also provision a Prometheus datasource named "CIM Prometheus" at
            {option}`services.cim.monitoring.grafana.datasource.url`. The dashboard asks which
            Prometheus datasource to use, so any other one works too.
          '';
        };

        url = lib.mkOption {
          type = lib.types.str;
          default = "http://127.0.0.1:${toString config.services.prometheus.port}";
          defaultText = lib.literalExpression ''"http://127.0.0.1:''${toString config.services.prometheus.port}"'';
          description = "Where Grafana reaches Prometheus.";
        };
      };
    };
  };

  config = lib.mkMerge [
    (lib.mkIf cfg.prometheus.enable {
      # Port 0 is a port the kernel picks at each start: no scrape target can name it.
      assertions = map (name: {
        assertion = top.${name}.settings.metrics.port != 0;
        message = "services.cim.${name}.settings.metrics.port is 0 (a random port at each start), which Prometheus cannot scrape (services.cim.monitoring.prometheus.enable); give it a fixed port, or null to serve no metrics";
      }) scraped;
      services.prometheus = {
        enable = lib.mkDefault true;
        scrapeConfigs = lib.optional (scraped != [ ]) {
          job_name = "cim";
          static_configs = lib.concatMap targetsOf scraped;
        };
      };
    })

    (lib.mkIf cfg.grafana.enable {
      services.grafana = {
        enable = lib.mkDefault true;
        provision = {
          enable = lib.mkDefault true;
          dashboards.settings.providers = [
            {
              name = "cim";
              folder = "CIM";
              options.path = dashboards;
            }
          ];
          datasources = lib.mkIf cfg.grafana.datasource.enable {
            settings.datasources = [
              {
                name = "CIM Prometheus";
                type = "prometheus";
                uid = "cim-prometheus";
                inherit (cfg.grafana.datasource) url;
              }
            ];
          };
        };
      };
    })
  ];
}
